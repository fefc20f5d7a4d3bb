"""A small YOLO-style detector and the measurements of MISSION H3, on a synthetic detection set rendered
offline: boxes and IoU, NMS (checked against torchvision.ops.nms), anchor priors by k-means on 1 - IoU, a
fully convolutional detector with one or three output scales, direct (sigmoid) or unconstrained offsets,
and independent sigmoid or softmax class outputs."""
