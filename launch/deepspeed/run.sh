#!/bin/bash
# fsdtrain deepspeed job `fsdtrain-pretrain-global`, rendered by: fsdtrain launch deepspeed --config configs/pretrain_global.yaml --nodes 2 --gpus-per-node 8
# DeepSpeed launcher: 2 node(s) x 8 GPU(s), started from this node over ssh (pdsh) on the
# hosts in HOSTFILE (one line per node: `host slots=8`; see hostfile.example). Rerun the same
# command after a failure: training resumes from the last checkpoint (--ckpt_path last).
#   run on the first node: HOSTFILE=hostfile bash run.sh
set -euo pipefail

HOSTFILE=${HOSTFILE:-hostfile}
MASTER_ADDR=${MASTER_ADDR:-$(hostname)}
MASTER_PORT=${MASTER_PORT:-29500}

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

# the hostfile must list as many hosts and slots as this job is rendered for: a mismatch would hang
awk -v nodes=2 -v slots=8 '
  !/^[[:space:]]*(#|$)/ { n++; if ($2 != "slots=" slots) { print "fsdtrain: " FILENAME ": " $1 " has " $2 ", this job needs slots=" slots > "/dev/stderr"; bad = 1 } }
  END { if (n != nodes) { print "fsdtrain: " FILENAME " lists " n " host(s), this job needs " nodes > "/dev/stderr"; bad = 1 } exit bad }
' "$HOSTFILE"

# the launcher passes only some variables to the other nodes: the rest go through DS_ENV_FILE
export DS_ENV_FILE="$CONFIG.env"
env | grep -E '^(FSDTRAIN_|AWS_ENDPOINT_URL|AWS_REGION|AWS_DEFAULT_REGION|AWS_PROFILE|AWS_CONFIG_FILE|AWS_SHARED_CREDENTIALS_FILE|AWS_REQUEST_CHECKSUM_CALCULATION|AWS_RESPONSE_CHECKSUM_VALIDATION|AWS_MAX_ATTEMPTS|AWS_RETRY_MODE|NCCL_|TORCH_NCCL_|OMP_NUM_THREADS)' > "$DS_ENV_FILE" || true

# no progress bar (it is unreadable in a log file): a plain line every 10 steps instead
"$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --num_nodes 2 --num_gpus 8 \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_local_rank \
  --module fsdtrain fit --config "$CONFIG" --trainer.num_nodes 2 --trainer.devices 8 --ckpt_path last --trainer.enable_progress_bar false
