//! Progress of a pull or push, per blob, for front ends that show it (the Docker API's
//! JSON progress stream). The core reports what happens; the front end words it.

use tokio::sync::mpsc::UnboundedSender;

/// One step of a pull or push. Blobs are named by their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A pull resolved its manifest: the image's layers, in order, each with its
    /// compressed size and whether it is already here (blob and snapshot).
    Layers(Vec<LayerState>),
    /// Bytes of a blob moved so far (download or upload), of `total`.
    Transferring {
        digest: String,
        current: u64,
        total: u64,
    },
    /// A pulled blob is fully downloaded and its digest is being checked.
    Verifying { digest: String },
    /// A pulled blob is downloaded and verified.
    Downloaded { digest: String },
    /// A pulled layer is being unpacked into its snapshot.
    Extracting { digest: String },
    /// A blob is done, and how.
    Done { digest: String, outcome: Outcome },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerState {
    pub digest: String,
    pub size: u64,
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pulled and unpacked.
    Pulled,
    /// The blob (and snapshot) were already here, or the registry already had it.
    Exists,
    /// Uploaded to the registry.
    Pushed,
    /// Mounted into the target repository from another one of the registry.
    Mounted { from: String },
}

/// Where progress goes; `None` when nobody listens.
#[derive(Debug, Clone, Default)]
pub struct ProgressSink(Option<UnboundedSender<Progress>>);

/// Transfer progress is reported at most once per this many bytes (and at the end).
pub const REPORT_EVERY_BYTES: u64 = 512 * 1024;

impl ProgressSink {
    pub fn new(sender: UnboundedSender<Progress>) -> ProgressSink {
        ProgressSink(Some(sender))
    }

    pub fn none() -> ProgressSink {
        ProgressSink(None)
    }

    /// Reports one step; a listener that went away is not an error (the pull goes on).
    pub fn report(&self, progress: Progress) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(progress);
        }
    }

    pub fn done(&self, digest: &str, outcome: Outcome) {
        self.report(Progress::Done {
            digest: digest.to_string(),
            outcome,
        });
    }

    /// A counter for one blob's transfer that reports every `REPORT_EVERY_BYTES`.
    pub fn transfer(&self, digest: &str, total: u64) -> TransferCounter {
        TransferCounter {
            sink: self.clone(),
            digest: digest.to_string(),
            total,
            current: 0,
            reported: 0,
        }
    }
}

pub struct TransferCounter {
    sink: ProgressSink,
    digest: String,
    total: u64,
    current: u64,
    reported: u64,
}

impl TransferCounter {
    pub fn add(&mut self, bytes: u64) {
        self.current += bytes;
        if self.current - self.reported >= REPORT_EVERY_BYTES || self.current >= self.total {
            self.reported = self.current;
            self.sink.report(Progress::Transferring {
                digest: self.digest.clone(),
                current: self.current,
                total: self.total,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_reported_in_steps_and_at_the_end() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = ProgressSink::new(tx);
        let total = REPORT_EVERY_BYTES * 2 + 10;
        let mut counter = sink.transfer("sha256:a", total);
        for _ in 0..(total / 1000) {
            counter.add(1000);
        }
        counter.add(total % 1000);
        let mut seen = Vec::new();
        while let Ok(Progress::Transferring { current, .. }) = rx.try_recv() {
            seen.push(current);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0] >= REPORT_EVERY_BYTES && seen[0] < total);
        assert_eq!(seen.last(), Some(&total));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn nobody_listening_is_fine() {
        let sink = ProgressSink::none();
        sink.done("sha256:a", Outcome::Pulled);
        let mut counter = sink.transfer("sha256:a", 1);
        counter.add(1);
    }
}
