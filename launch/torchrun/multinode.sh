#!/bin/bash
# fsdtrain torchrun job `fsdtrain-pretrain-global`, rendered by: fsdtrain launch torchrun --config configs/pretrain_global.yaml --nodes 2 --gpus-per-node 8
# torchrun: 2 node(s) x 8 process(es). Run this same file on every node:
#   MASTER_ADDR=<host name of the first node> NODE_RANK=<0..1> bash multinode.sh
# c10d rendezvous at $MASTER_ADDR:$MASTER_PORT. When a process dies, torchrun stops and restarts the
# whole group (up to MAX_RESTARTS times) and training resumes from the last checkpoint (--ckpt_path last).
set -euo pipefail

NNODES=2
NPROC_PER_NODE=8
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the host name of the first node (the rendezvous host)}
MASTER_PORT=${MASTER_PORT:-29500}
# EDIT: a new id for each job (two jobs must not share one on the same rendezvous host)
RDZV_ID=${RDZV_ID:-fsdtrain-pretrain-global}
MAX_RESTARTS=${MAX_RESTARTS:-3}
# each rendezvous round (every restart) gets a fresh store: torchrun's shared one keeps the previous
# round's keys, and a restarted group could read a dead process's address from them and fail to connect
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

# EDIT: the Python that has fsdtrain installed, the same path on every node (or activate a venv here)
PYTHON=${PYTHON:-python}

# residency zone of this site (docs/residency.md); every rank reads only the data this zone allows
export FSDTRAIN_SITE_ZONE=global
# object store: the endpoint here; keys from your environment, AWS profile or secret store, never this file
# EDIT: your S3 endpoint (SeaweedFS, MinIO, OSS); leave out for AWS S3
# export AWS_ENDPOINT_URL=http://store.example.com:8333
# export AWS_PROFILE=fleet  # EDIT: or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from your secret store
# NCCL (docs/multi-node.md): EDIT the network interface and InfiniBand adapters of your nodes
# export NCCL_SOCKET_IFNAME=ib0
# export NCCL_IB_HCA=mlx5
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# a rank that fails or hangs in a collective ends the job (and its restart) instead of blocking it
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}

# EDIT: the config, readable at this path on every node (a relative path: from where the job starts)
CONFIG=configs/pretrain_global.yaml

# NODE_RANK is optional with c10d (the rendezvous numbers the nodes); given, it fixes the order.
# No progress bar (it is unreadable in a log file): a plain line every 10 steps instead.
"$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" ${NODE_RANK:+--node-rank "$NODE_RANK"} \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" --max-restarts "$MAX_RESTARTS" \
  -m fsdtrain fit --config "$CONFIG" --trainer.num_nodes 2 --trainer.devices 8 --ckpt_path last --trainer.enable_progress_bar false
