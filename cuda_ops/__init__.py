"""Ops torchvision lacks, each as a PyTorch reference that runs anywhere (CPU or GPU, with
autograd) plus a CUDA kernel compiled on first use where CUDA and nvcc exist, tested
against the reference. A missing compiler is never an install failure: the reference
runs instead.

torchvision already provides nms, batched_nms, roi_align, deform_conv2d (with a mask for
DCNv2) and sigmoid_focal_loss; the models use those directly. The ops planned here are
deformable RoI pooling and Soft-NMS (D2Det), corner pooling (RepPoints V2) and Chamfer
distance (Dense RepPoints); each arrives with the model that needs it.

Present so far (PyTorch references only; no CUDA kernel yet):

- ``cuda_ops.deform_roi_pool``: ``deform_roi_pool`` / ``DeformRoIPool``, mmdet v1's
  ``deform_psroi_pooling`` with ``group_size=1`` (D2Det's discriminative RoI pooling), with
  gradients to the features and the offsets;
- ``cuda_ops.soft_nms``: ``soft_nms`` / ``batched_soft_nms``, mmdet v1's CPU Soft-NMS
  (linear or gaussian, legacy ``+1`` IoU), D2Det's final detection step.
"""
