"""The job file templates behind ``fsdtrain launch`` and the files in launch/.

``{{key}}`` marks a value :func:`fsdtrain.launch.jobs.render_job` fills in; every other ``$`` is the
job file's own shell or YAML. Lines with ``EDIT`` are the ones a user adapts to a cluster; the
rest follows from the config and ``--nodes``/``--gpus-per-node``.
"""

from __future__ import annotations

__all__ = ["TEMPLATES", "PARTS", "FILE_NAMES", "HOSTFILE", "INGEST_TEMPLATES", "INGEST_FILE_NAMES"]

#: file name of each kind's job file (as in launch/<kind>/)
FILE_NAMES = {"slurm": "train.sbatch", "torchrun": "multinode.sh", "deepspeed": "run.sh", "k8s": "pytorchjob.yaml"}

_ENV = """\
# EDIT: the Python that has fsdtrain installed, the same path on every node (or activate a venv here)
PYTHON=${PYTHON:-python}

# residency zone of this site (docs/residency.md); every rank reads only the data this zone allows
export FSDTRAIN_SITE_ZONE={{site_zone}}
# object store: the endpoint here; keys from your environment, AWS profile or secret store, never this file
{{store_env}}
# NCCL (docs/multi-node.md): EDIT the network interface and InfiniBand adapters of your nodes
# export NCCL_SOCKET_IFNAME=ib0
# export NCCL_IB_HCA=mlx5
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# a rank that fails or hangs in a collective ends the job (and its restart) instead of blocking it
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-{{omp_threads}}}
"""

_SLURM = """\
#!/bin/bash
# {{title}}
# SLURM: {{nodes}} node(s) x {{gpus}} GPU(s), one task per GPU started by srun. SLURM sends SIGUSR1
# 90 s before the time limit: fsdtrain saves a checkpoint at the next step, requeues the job and
# stops; a preempted or failed job is requeued too (--requeue). Every start resumes from `last`.
#   submit: sbatch {{file}}
#SBATCH --job-name={{name}}
#SBATCH --nodes={{nodes}}
#SBATCH --ntasks-per-node={{gpus}}
#SBATCH --gpus-per-node={{gpus}}
#SBATCH --cpus-per-task={{cpus_per_task}}
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# EDIT above: --time (the job requeues itself before it ends); --signal's 90 s must cover one checkpoint
# save; --cpus-per-task = data.num_workers + 1. EDIT below: your partition and account.
##SBATCH --partition=gpu
##SBATCH --account=my-account
set -euo pipefail

{{env}}
{{config_block}}
# one task per GPU; a task that dies ends the step (--kill-on-bad-exit) instead of leaving the others waiting.
# No progress bar (it is unreadable in a log file): a plain line every 10 steps instead.
srun --kill-on-bad-exit=1 "$PYTHON" -m fsdtrain fit --config "$CONFIG" \\
  --trainer.num_nodes {{nodes}} --trainer.devices {{gpus}} --ckpt_path last --trainer.enable_progress_bar false{{extra_args}}
"""

_TORCHRUN = """\
#!/bin/bash
# {{title}}
# torchrun: {{nodes}} node(s) x {{gpus}} process(es). Run this same file on every node:
#   MASTER_ADDR=<host name of the first node> NODE_RANK=<0..{{last_node}}> bash {{file}}
# c10d rendezvous at $MASTER_ADDR:$MASTER_PORT. When a process dies, torchrun stops and restarts the
# whole group (up to MAX_RESTARTS times) and training resumes from the last checkpoint (--ckpt_path last).
set -euo pipefail

NNODES={{nodes}}
NPROC_PER_NODE={{gpus}}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the host name of the first node (the rendezvous host)}
MASTER_PORT=${MASTER_PORT:-29500}
# EDIT: a new id for each job (two jobs must not share one on the same rendezvous host)
RDZV_ID=${RDZV_ID:-{{name}}}
MAX_RESTARTS=${MAX_RESTARTS:-3}
# each rendezvous round (every restart) gets a fresh store: torchrun's shared one keeps the previous
# round's keys, and a restarted group could read a dead process's address from them and fail to connect
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

{{env}}
{{config_block}}
# NODE_RANK is optional with c10d (the rendezvous numbers the nodes); given, it fixes the order.
# No progress bar (it is unreadable in a log file): a plain line every 10 steps instead.
"$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" ${NODE_RANK:+--node-rank "$NODE_RANK"} \\
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" --max-restarts "$MAX_RESTARTS" \\
  -m fsdtrain fit --config "$CONFIG" --trainer.num_nodes {{nodes}} --trainer.devices {{gpus}} --ckpt_path last --trainer.enable_progress_bar false{{extra_args}}
"""

_DEEPSPEED = """\
#!/bin/bash
# {{title}}
# DeepSpeed launcher: {{nodes}} node(s) x {{gpus}} GPU(s), started from this node over ssh (pdsh) on the
# hosts in HOSTFILE (one line per node: `host slots={{gpus}}`; see hostfile.example). Rerun the same
# command after a failure: training resumes from the last checkpoint (--ckpt_path last).
#   run on the first node: HOSTFILE=hostfile bash {{file}}
set -euo pipefail

HOSTFILE=${HOSTFILE:-hostfile}
MASTER_ADDR=${MASTER_ADDR:-$(hostname)}
MASTER_PORT=${MASTER_PORT:-29500}

{{env}}
{{config_block}}
# the hostfile must list as many hosts and slots as this job is rendered for: a mismatch would hang
awk -v nodes={{nodes}} -v slots={{gpus}} '
  !/^[[:space:]]*(#|$)/ { n++; if ($2 != "slots=" slots) { print "fsdtrain: " FILENAME ": " $1 " has " $2 ", this job needs slots=" slots > "/dev/stderr"; bad = 1 } }
  END { if (n != nodes) { print "fsdtrain: " FILENAME " lists " n " host(s), this job needs " nodes > "/dev/stderr"; bad = 1 } exit bad }
' "$HOSTFILE"

# the launcher passes only some variables to the other nodes: the rest go through DS_ENV_FILE
export DS_ENV_FILE="$CONFIG.env"
env | grep -E '^(FSDTRAIN_|AWS_ENDPOINT_URL|AWS_REGION|AWS_DEFAULT_REGION|AWS_PROFILE|AWS_CONFIG_FILE|AWS_SHARED_CREDENTIALS_FILE|AWS_REQUEST_CHECKSUM_CALCULATION|AWS_RESPONSE_CHECKSUM_VALIDATION|AWS_MAX_ATTEMPTS|AWS_RETRY_MODE|NCCL_|TORCH_NCCL_|OMP_NUM_THREADS)' > "$DS_ENV_FILE" || true

# no progress bar (it is unreadable in a log file): a plain line every 10 steps instead
"$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --num_nodes {{nodes}} --num_gpus {{gpus}} \\
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_local_rank \\
  --module fsdtrain fit --config "$CONFIG" --trainer.num_nodes {{nodes}} --trainer.devices {{gpus}} --ckpt_path last --trainer.enable_progress_bar false{{extra_args}}
"""

HOSTFILE = """\
# DeepSpeed hostfile: one line per node, `host slots=GPUs`; the first host runs launch/deepspeed/run.sh.
# Every host must be reachable by password-less ssh from the first and see the same workdir.
# EDIT: your host names; slots = --gpus-per-node of `fsdtrain launch deepspeed`.
{{hosts}}
"""

_K8S_POD = """\
      restartPolicy: OnFailure
      template:
        spec:
          containers:
            - name: pytorch
              # EDIT: the image built from launch/container/Dockerfile and pushed to your registry (--image)
              image: {{image}}
              workingDir: {{working_dir}}
              # no progress bar (unreadable in pod logs): a plain line every 10 steps instead
              command: [python, -m, fsdtrain, fit, --config, /etc/fsdtrain/config.yaml, --trainer.num_nodes, "{{nodes}}", --trainer.devices, "{{gpus}}", --ckpt_path, last, --trainer.enable_progress_bar, "false"{{extra_list}}]
              env:
                - name: FSDTRAIN_SITE_ZONE
                  value: "{{site_zone}}"
{{k8s_store_env}}
                - name: NCCL_DEBUG
                  value: WARN
                - name: TORCH_NCCL_ASYNC_ERROR_HANDLING
                  value: "1"
                # EDIT: NCCL_SOCKET_IFNAME / NCCL_IB_HCA for your nodes' network (docs/multi-node.md)
              resources:
                limits:
                  nvidia.com/gpu: {{gpus}}
              volumeMounts:
                - {name: config, mountPath: /etc/fsdtrain, readOnly: true}
                - {name: workdir, mountPath: {{workdir_mount}}}
                - {name: dshm, mountPath: /dev/shm}
          volumes:
            - name: config
              {{config_volume}}
            # EDIT: a ReadWriteMany volume: every pod writes its ZeRO shards to the same checkpoint folder
            - name: workdir
              persistentVolumeClaim: {claimName: {{name}}-workdir}
            # loader workers hand batches over in shared memory
            - name: dshm
              emptyDir: {medium: Memory}
"""

_K8S = """\
# {{title}}
# Kubeflow PyTorchJob: {{nodes}} pod(s) (1 Master + {{workers}} Worker) x {{gpus}} GPU(s). Lightning starts one
# process per GPU in each pod; fsdtrain reads the operator's MASTER_ADDR, MASTER_PORT, RANK (pod index)
# and WORLD_SIZE as pod numbers (docs/multi-node.md). A failed pod is restarted (restartPolicy OnFailure),
# the others lose their peer and restart too, and training resumes from the last checkpoint.
#   submit: kubectl apply -f {{file}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{name}}-config
data:
{{config_map}}
---
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata:
  name: {{name}}
spec:
  runPolicy:
    # EDIT: pod restarts allowed before the job counts as failed
    backoffLimit: 3
    cleanPodPolicy: None
  pytorchReplicaSpecs:
    Master:
      replicas: 1
{{master_pod}}{{worker}}"""

_K8S_WORKER = """\
    Worker:
      replicas: {{workers}}
{{worker_pod}}"""

#: the job file template of each kind; ``{{env}}``, ``{{config_block}}`` and the k8s pod are filled in first
TEMPLATES = {"slurm": _SLURM, "torchrun": _TORCHRUN, "deepspeed": _DEEPSPEED, "k8s": _K8S}
PARTS = {"env": _ENV, "k8s_pod": _K8S_POD, "k8s_worker": _K8S_WORKER}


# --- ingest jobs: `fsdtrain launch slurm|k8s --parts N -- data write ...` ---------------------------

#: file name of each kind's ingest job file
INGEST_FILE_NAMES = {"slurm": "ingest.sbatch", "k8s": "ingest-job.yaml"}

_SLURM_INGEST = """\
#!/bin/bash
# {{title}}
# SLURM array of {{parts}} tasks: task I runs `fsdtrain data write ... --part I/{{parts}}` on its share of the
# drives (whole groups, in name order) and stages its shards; the last task to finish publishes one manifest
# per country folder, atomically (docs/data-format.md, "Ingest at scale"). A task that fails leaves the
# published dataset as it was: resubmit it alone (sbatch --array=I {{file}}); a finished task that runs
# again does nothing. The same data write flags with --publish {{parts}} instead of --part publish by hand,
# or name the parts still missing.
#   submit: sbatch {{file}}
#SBATCH --job-name={{name}}
#SBATCH --array=1-{{parts}}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={{cpus}}
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
# EDIT above: --time for one part; --array=1-{{parts}}%K runs at most K parts at once; --cpus-per-task is
# data write's --workers. EDIT below: your partition and account.
##SBATCH --partition=cpu
##SBATCH --account=my-account
set -euo pipefail

# EDIT: the Python that has fsdtrain installed, the same path on every node (or activate a venv here)
PYTHON=${PYTHON:-python}
# residency zone of this site (docs/residency.md): a part reads only the drives this zone allows
export FSDTRAIN_SITE_ZONE={{site_zone}}
# object store: the endpoint here; keys from your environment, AWS profile or secret store, never this file
{{store_env}}
# a part copies its raw drives here before reading them: EDIT to a local disk that holds one part's drives
# export TMPDIR=/local/scratch/$USER

"$PYTHON" -m fsdtrain data write{{args}} --part "$SLURM_ARRAY_TASK_ID/{{parts}}"
"""

_K8S_INGEST = """\
# {{title}}
# Kubernetes Indexed Job: {{parts}} completions; the pod of index I-1 runs `fsdtrain data write ... --part I/{{parts}}`
# on its share of the drives and stages its shards; the last part to finish publishes one manifest per
# country folder, atomically (docs/data-format.md, "Ingest at scale"). A failed pod is retried (its part
# starts over; the published dataset stays as it was meanwhile); a finished part that runs again does
# nothing. The same data write flags with --publish {{parts}} instead of --part publish by hand, or name
# the parts still missing.
#   submit: kubectl apply -f {{file}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{name}}
spec:
  completionMode: Indexed
  completions: {{parts}}
  # EDIT: parts running at once
  parallelism: {{parts}}
  # EDIT: pod failures allowed, over all parts, before the job counts as failed
  backoffLimit: {{parts}}
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: ingest
          # EDIT: the image built from launch/container/Dockerfile and pushed to your registry (--image)
          image: {{image}}
          # JOB_COMPLETION_INDEX counts from 0, parts from 1; the data write flags follow the script as "$@"
          command: [sh, -c, 'exec python -m fsdtrain data write "$@" --part "$((JOB_COMPLETION_INDEX + 1))/{{parts}}"', fsdtrain{{args_list}}]
          env:
            - name: FSDTRAIN_SITE_ZONE
              value: "{{site_zone}}"
{{k8s_store_env}}
            - name: TMPDIR
              value: /scratch
          resources:
            requests: {cpu: "{{cpus}}"}
          volumeMounts:
            - {name: scratch, mountPath: /scratch}
      volumes:
        # a part copies its raw drives here before reading them: EDIT the size to hold one part's drives
        - name: scratch
          emptyDir: {sizeLimit: 200Gi}
"""

#: the ingest job template of each kind (`fsdtrain launch KIND --parts N -- data write ...`)
INGEST_TEMPLATES = {"slurm": _SLURM_INGEST, "k8s": _K8S_INGEST}
