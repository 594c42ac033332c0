//! runtime.v1.ImageService.

/// Holds nothing until the image service lands.
pub struct Images;

cri_service! {
    impl k8s_cri::v1::image_service_server::ImageService as "ImageService" for Images;
    pending {
        list_images(ListImagesRequest) -> ListImagesResponse;
        image_status(ImageStatusRequest) -> ImageStatusResponse;
        pull_image(PullImageRequest) -> PullImageResponse;
        remove_image(RemoveImageRequest) -> RemoveImageResponse;
        image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
    }
}
