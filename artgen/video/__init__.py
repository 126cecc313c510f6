"""Video stylisation: ``pipeline`` (decode, stylise frame by frame, encode, resume) and
``temporal`` (optical flow, warping and the temporal blend)."""
