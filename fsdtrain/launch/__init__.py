"""Multi-node launch (docs/multi-node.md): job files for SLURM, torchrun, DeepSpeed and Kubernetes
rendered from one config (:mod:`~fsdtrain.launch.render`), pre-flight checks
(:mod:`~fsdtrain.launch.preflight`), cluster detection for the Trainer (:mod:`~fsdtrain.launch.cluster`)
and SLURM requeue at a step boundary (:mod:`~fsdtrain.launch.requeue`)."""
