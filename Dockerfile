# The image every node of cluster.yaml runs: Ray's GPU image with ptdist's dependencies already
# installed at the versions of the project's one lock (torch as the CUDA build of the lock's
# version with the CUDA wheels the lock pins, DeepSpeed, transformers, datasets...), so a node
# that boots installs only ptdist itself (from the repository cluster.yaml copies to it), not
# torch and DeepSpeed. The base image's Ray is the lock's (tests/test_cluster_config.py checks
# this file against the lock and against cluster.yaml's docker.image).
#
# Build it from the repository's root and push it where the nodes pull from (cluster.yaml's
# header: ECR), tagged with the Ray version and the lock it installed, which cluster.yaml names:
#
#   TAG=ray2.60.0-lock$(sha256sum requirements/lock.txt | cut -c1-12)
#   docker build -t 123456789012.dkr.ecr.us-east-1.amazonaws.com/ptdist:$TAG .
#   docker push 123456789012.dkr.ecr.us-east-1.amazonaws.com/ptdist:$TAG
FROM rayproject/ray:2.60.0-py311-gpu

# The image runs as its user "ray" (group "users"), who owns the Python environment.
COPY --chown=ray:users pyproject.toml /tmp/ptdist/pyproject.toml
COPY --chown=ray:users requirements/lock.txt /tmp/ptdist/requirements/lock.txt

# ptdist's own dependencies (pyproject.toml's, no extras), every version from the lock.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/ptdist/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/ptdist/dependencies.txt \
    && pip install --no-cache-dir -c /tmp/ptdist/requirements/lock.txt -r /tmp/ptdist/dependencies.txt \
    && python -c "import ray, torch, deepspeed; assert torch.version.cuda, 'torch is not a CUDA build'; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)" \
    && rm -rf /tmp/ptdist
