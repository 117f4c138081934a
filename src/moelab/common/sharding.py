"""The convention by which a plain tensor says it is one rank's slice of a larger tensor.

Expert parallelism (``moelab.parallel.expert``) keeps each rank's experts as a plain local
``nn.Parameter`` and sets ``LOCAL_SHARD_ATTR`` on it to the 1-D DeviceMesh it is split over
(dim 0, equal slices in rank order). DCP checkpoints (``moelab.checkpoint.dcp``) read the
attribute to save such tensors under their global shape. Neither package imports the other.
"""

LOCAL_SHARD_ATTR = "_moelab_local_shard_mesh"
