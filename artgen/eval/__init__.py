"""Judging generators and pictures: ``evaluate`` (the command's procedure), ``registry``
(one entry per metric, with its own settings and lazy context), ``metrics`` (the pure
maths: FD, KID, precision/recall, fairness intervals) and ``probe`` (attribute probes)."""
