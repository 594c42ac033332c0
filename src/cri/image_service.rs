//! runtime.v1.ImageService: the tonic service. Each RPC is handled in image.rs.

use std::sync::Arc;

use k8s_cri::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use tonic::{Request, Response, Status};

use super::{image, CriServer};

pub struct Images(pub(super) Arc<CriServer>);

cri_service! {
    impl k8s_cri::v1::image_service_server::ImageService as "ImageService" for Images;
    pending {}

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(image::list_images(&self.0, request.into_inner())))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        image::image_status(&self.0, request.into_inner()).map(Response::new)
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        image::pull_image(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        image::remove_image(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        image::image_fs_info(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }
}
