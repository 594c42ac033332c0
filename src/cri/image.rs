//! ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo: CRI messages to
//! `image::ImageService` calls, and image records to CRI messages (the tonic service is
//! in image_service.rs).

use std::collections::HashMap;

use base64::Engine as _;
use k8s_cri::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::Status;

use super::{status, CriServer, NAMESPACE};
use crate::image::registry::Credentials;
use crate::image::Image;

pub(super) fn list_images(server: &CriServer, request: ListImagesRequest) -> ListImagesResponse {
    let wanted = request
        .filter
        .and_then(|filter| filter.image)
        .map(|spec| spec.image)
        .filter(|image| !image.is_empty());
    let images = match wanted {
        Some(query) => server.images.get(NAMESPACE, &query).into_iter().collect(),
        None => server.images.list(NAMESPACE),
    };
    ListImagesResponse {
        images: images.iter().map(cri_image).collect(),
    }
}

pub(super) fn image_status(
    server: &CriServer,
    request: ImageStatusRequest,
) -> Result<ImageStatusResponse, Status> {
    let query = image_name(request.image.as_ref(), "ImageStatus")?;
    // An absent image is a response without an image, not an error (CRI contract).
    let Some(image) = server.images.get(NAMESPACE, query) else {
        return Ok(ImageStatusResponse::default());
    };
    let info = if request.verbose {
        let config = server
            .images
            .config_json(&image)
            .map_err(status::from_image)?;
        let config: serde_json::Value =
            serde_json::from_slice(&config).unwrap_or(serde_json::Value::Null);
        let info = serde_json::json!({
            "id": image.id,
            "chainID": image.layers.last().map(|l| l.chain_id.clone()),
            "manifestDigest": image.manifest_digest,
            "manifestMediaType": image.manifest_media_type,
            "indexDigest": image.index_digest,
            "layers": image.layers,
            "imageSpec": config,
        });
        HashMap::from([("info".to_string(), info.to_string())])
    } else {
        HashMap::new()
    };
    Ok(ImageStatusResponse {
        image: Some(cri_image(&image)),
        info,
    })
}

pub(super) async fn pull_image(
    server: &CriServer,
    request: PullImageRequest,
) -> Result<PullImageResponse, Status> {
    let reference = image_name(request.image.as_ref(), "PullImage")?;
    let credentials = credentials(request.auth.as_ref())?;
    let image = server
        .images
        .pull(NAMESPACE, reference, &credentials)
        .await
        .map_err(status::from_image)?;
    tracing::info!(reference, image = %image.id, "pulled image");
    Ok(PullImageResponse {
        image_ref: image.id,
    })
}

pub(super) async fn remove_image(
    server: &CriServer,
    request: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    let query = image_name(request.image.as_ref(), "RemoveImage")?;
    if server
        .images
        .remove(NAMESPACE, query)
        .await
        .map_err(status::from_image)?
    {
        tracing::info!(image = query, "removed image");
    }
    Ok(RemoveImageResponse {})
}

pub(super) async fn image_fs_info(
    server: &CriServer,
    _request: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    let images = server.images.clone();
    let (used_bytes, inodes_used) = tokio::task::spawn_blocking(move || images.usage())
        .await
        .map_err(|err| Status::internal(format!("ImageFsInfo: {err}")))?
        .map_err(status::from_image)?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: server.config.root.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: used_bytes }),
            inodes_used: Some(UInt64Value { value: inodes_used }),
        }],
        container_filesystems: Vec::new(),
    })
}

/// The `image` of a request's ImageSpec, which must be set.
fn image_name<'a>(spec: Option<&'a ImageSpec>, rpc: &str) -> Result<&'a str, Status> {
    spec.map(|spec| spec.image.as_str())
        .filter(|image| !image.is_empty())
        .ok_or_else(|| Status::invalid_argument(format!("{rpc}: image.image must name an image")))
}

/// CRI AuthConfig to registry credentials. The secrets never reach a log or an error.
fn credentials(auth: Option<&AuthConfig>) -> Result<Credentials, Status> {
    let Some(auth) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !auth.registry_token.is_empty() {
        return Ok(Credentials::RegistryToken(auth.registry_token.clone()));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Credentials::IdentityToken(auth.identity_token.clone()));
    }
    if !auth.username.is_empty() || !auth.password.is_empty() {
        return Ok(Credentials::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        });
    }
    if !auth.auth.is_empty() {
        // Docker's `auth`: base64 of "username:password".
        let invalid = || {
            Status::invalid_argument("PullImage: auth.auth is not base64 of \"username:password\"")
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|_| invalid())?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
        let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
        return Ok(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    Ok(Credentials::Anonymous)
}

fn cri_image(image: &Image) -> k8s_cri::v1::Image {
    let (uid, username) = image_user(&image.user);
    k8s_cri::v1::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec {
            image: image.id.clone(),
            ..ImageSpec::default()
        }),
        pinned: image.pinned,
    }
}

/// The image config's `User` as CRI wants it, following containerd: a numeric user is a
/// uid, a name is a username, a group part is ignored, and empty means neither.
fn image_user(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_users_follow_containerd() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(image_user("1000"), (Some(1000), String::new()));
        assert_eq!(image_user("1000:50"), (Some(1000), String::new()));
        assert_eq!(image_user("wharf"), (None, "wharf".to_string()));
        assert_eq!(image_user("wharf:staff"), (None, "wharf".to_string()));
    }

    #[test]
    fn auth_configs_map_to_credentials() {
        assert!(matches!(credentials(None).unwrap(), Credentials::Anonymous));
        let basic = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
            ..AuthConfig::default()
        };
        match credentials(Some(&basic)).unwrap() {
            Credentials::Basic { username, password } => {
                assert_eq!((username.as_str(), password.as_str()), ("alice", "s3cret"))
            }
            other => panic!("expected Basic, got {other:?}"),
        }
        let token = AuthConfig {
            identity_token: "refresh".into(),
            ..AuthConfig::default()
        };
        assert!(matches!(
            credentials(Some(&token)).unwrap(),
            Credentials::IdentityToken(_)
        ));
        let bad = AuthConfig {
            auth: "%%%".into(),
            ..AuthConfig::default()
        };
        let err = credentials(Some(&bad)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(!err.message().contains("%%%"));
    }
}
