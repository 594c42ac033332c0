//! Counts the RPCs being handled, so that shutdown waits for in-flight calls but not for
//! idle client connections (kubelet and crictl keep theirs open indefinitely, and a
//! stopped client would otherwise hold the daemon until the shutdown timeout).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct InFlight {
    inner: Arc<Counter>,
}

#[derive(Default)]
struct Counter {
    calls: AtomicUsize,
    idle: Notify,
}

/// Held while one call runs.
struct CallGuard(Arc<Counter>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn enter(&self) -> CallGuard {
        self.inner.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.inner.clone())
    }

    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::Acquire)
    }

    /// Resolves once no call is running.
    pub async fn wait_idle(&self) {
        loop {
            // Registered before the check, so a call ending in between still wakes us.
            let notified = self.inner.idle.notified();
            if self.calls() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A tower layer that counts every request passing through it.
    pub fn layer(&self) -> InFlightLayer {
        InFlightLayer(self.clone())
    }
}

#[derive(Clone)]
pub struct InFlightLayer(InFlight);

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = TrackInFlight<S>;

    fn layer(&self, inner: S) -> TrackInFlight<S> {
        TrackInFlight {
            inner,
            in_flight: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TrackInFlight<S> {
    inner: S,
    in_flight: InFlight,
}

impl<S, Request> tower::Service<Request> for TrackInFlight<S>
where
    S: tower::Service<Request>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let guard = self.in_flight.enter();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(guard);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::{Layer, Service};

    #[tokio::test]
    async fn waits_for_running_calls_only() {
        let in_flight = InFlight::default();
        in_flight.wait_idle().await; // nothing running: immediate

        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release_rx = std::sync::Mutex::new(Some(release_rx));
        let slow = tower::service_fn(move |_: ()| {
            let rx = release_rx.lock().unwrap().take().unwrap();
            async move {
                let _ = rx.await;
                Ok::<_, std::convert::Infallible>("done")
            }
        });
        let mut service = in_flight.layer().layer(slow);
        let call = tokio::spawn(service.call(()));
        tokio::task::yield_now().await;
        assert_eq!(in_flight.calls(), 1);

        let waiter = in_flight.clone();
        let idle = tokio::spawn(async move { waiter.wait_idle().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!idle.is_finished(), "a call is still running");

        release_tx.send(()).unwrap();
        assert_eq!(call.await.unwrap().unwrap(), "done");
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("idle after the call ended")
            .unwrap();
        assert_eq!(in_flight.calls(), 0);
    }
}
