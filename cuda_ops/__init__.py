"""Ops torchvision lacks, each as a PyTorch reference that runs anywhere (CPU or GPU, with
autograd) plus a CUDA kernel compiled on first use where CUDA and nvcc exist, tested
against the reference. A missing compiler is never an install failure: the reference
runs instead.

torchvision already provides nms, batched_nms, roi_align, deform_conv2d (with a mask for
DCNv2) and sigmoid_focal_loss; the models use those directly. The ops planned here are
deformable RoI pooling and Soft-NMS (D2Det), corner pooling (RepPoints V2) and Chamfer
distance (Dense RepPoints); each arrives with the model that needs it.

Present so far:

- ``cuda_ops.deform_roi_pool``: ``deform_roi_pool`` / ``DeformRoIPool``, mmdet v1's
  ``deform_psroi_pooling`` with ``group_size=1`` (D2Det's discriminative RoI pooling), with
  gradients to the features and the offsets. ``deform_roi_pool_reference`` is the PyTorch
  ground truth; ``deform_roi_pool`` runs the CUDA kernel (``csrc/deform_roi_pool_cuda.cu``,
  forward and backward) for CUDA tensors when it builds, else the reference;
- ``cuda_ops.soft_nms``: ``soft_nms`` / ``batched_soft_nms``, mmdet v1's CPU Soft-NMS
  (linear or gaussian, legacy ``+1`` IoU), D2Det's final detection step (PyTorch only);
- ``cuda_ops.corner_pool``: ``corner_pool(x, direction)`` / ``CornerPool(direction)``,
  CornerNet's top/bottom/left/right pools (running max over rows >= i, rows <= i, columns
  >= i, columns <= i of ``[B, C, H, W]``) for RepPoints V2's TLPool (top + left) and BRPool
  (bottom + right). ``corner_pool_reference`` (flip + ``torch.cummax``) is the ground truth:
  the gradient goes to the argmax, the nearest of tied maxima; ``corner_pool`` runs the CUDA
  kernel (``csrc/corner_pool_cuda.cu``, forward and deterministic backward) for CUDA tensors
  when it builds, else the reference;
- ``cuda_ops.chamfer_2d``: ``chamfer_distance(a [P, N, 2], b [P, M, 2])`` -> ``(dist_ab,
  dist_ba, idx_ab, idx_ba)``, the squared distance from each point to its nearest neighbour
  in the other set of its instance and that neighbour's index (the lowest index among equal
  distances), Dense RepPoints' Chamfer loss's search (``models/dense_reppoints/chamfer_loss.py`` uses
  its indices on CUDA). ``chamfer_distance_reference`` (exact ``dx*dx + dy*dy`` on chunks of
  instances, ``argmin``, gradient through the matched pairs) is the ground truth;
  ``chamfer_distance`` runs the CUDA kernel (``csrc/chamfer_2d_cuda.cu``, float32/float64,
  forward with indices and a deterministic backward from them; any number of points) for
  CUDA tensors when it builds, else the reference.

Building: ``cuda_ops._extension.load_deform_roi_pool_ext``, ``load_corner_pool_ext`` and
``load_chamfer_2d_ext`` compile their extension with ``torch.utils.cpp_extension`` (ninja +
nvcc; ninja is pinned in requirements.lock) the first time a CUDA tensor needs it, into
``$DETLAB_CUDA_CACHE`` (default ``~/.cache/detlab/cuda_ops``), and fall back to the reference,
with one logged warning, when CUDA, nvcc or the build is missing. ``DETLAB_DISABLE_CUDA_OPS=1``
forces the references. ``python -m cuda_ops.build`` compiles all three ahead of use (``--op``
for one), also without a GPU (sm_90 by default, ``TORCH_CUDA_ARCH_LIST`` or ``--arch`` to
choose).
"""
