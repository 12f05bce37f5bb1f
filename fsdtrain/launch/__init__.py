"""Multi-node launch (docs/multi-node.md): job files for SLURM, torchrun, DeepSpeed and Kubernetes
rendered from one config (:mod:`~fsdtrain.launch.jobs`) and pre-flight checks
(:mod:`~fsdtrain.launch.preflight`). What runs inside each rank (cluster detection, SLURM requeue)
is in :mod:`fsdtrain.train`."""
