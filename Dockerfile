# The deployer image: what every Cloud Build step in cloudbuild/ runs.
#
#   docker build -t deployer .                       # or, without Docker:
#   gcloud builds submit --tag=REGION-docker.pkg.dev/PROJECT_ID/deployer/deployer:0.1.0 .
#   docker run --rm deployer check -c configs/staging.yaml
#
# Runtime dependencies only (`pip install .`, never the dev extra), as a non-root user. Google
# credentials come from the environment it runs in (the Cloud Build step's service account through
# the metadata server); nothing secret is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so a mounted directory can be made writable for it (cloudbuild/deploy.yaml does).
RUN groupadd --system --gid 10001 deployer \
    && useradd --system --uid 10001 --gid deployer --home-dir /home/deployer --create-home deployer

WORKDIR /opt/deployer
COPY pyproject.toml README.md ./
COPY deployer ./deployer
RUN pip install --no-compile . \
    && rm -rf /opt/deployer/build /opt/deployer/*.egg-info \
    && deployer --help > /dev/null

USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["deployer"]
CMD ["--help"]
