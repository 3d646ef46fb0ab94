# The Flex Template launcher (docs/operations/dataflow.md): builds the job from the
# template's parameters with deploy/dataflow/launch.py and submits it to run on the
# worker image. Build it from the repository root (deploy/dataflow/cloudbuild.yaml does):
#   docker build -f deploy/dataflow/launcher.Dockerfile --build-arg WORKER_IMAGE=IMAGE \
#     --build-arg AWS_ROLE_ARN=arn:aws:iam::ACCOUNT:role/NAME --build-arg AWS_REGION=REGION .
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base

# The worker image the jobs run on (the same tag as this build's), and the AWS profile
# of the workers: the launch describes the stream with it before submitting.
ARG WORKER_IMAGE
ARG AWS_ROLE_ARN
ARG AWS_REGION

COPY setup.py /template/setup.py
COPY pipeline /template/pipeline
COPY transforms /template/transforms
COPY deploy/dataflow/launch.py /template/launch.py
COPY deploy/dataflow/write-aws-config.sh /template/write-aws-config.sh

# The project with its pins and the gcp extra (apache-beam[gcp], the version setup.py pins).
RUN test -n "$WORKER_IMAGE" || { echo "error: build with --build-arg WORKER_IMAGE=IMAGE" >&2; exit 1; } \
    && pip install --no-cache-dir "/template[gcp]" \
    && /template/write-aws-config.sh "$AWS_ROLE_ARN" "$AWS_REGION" /etc/segment-events/aws-config

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch.py \
    SEGMENT_EVENTS_WORKER_IMAGE=${WORKER_IMAGE} \
    AWS_CONFIG_FILE=/etc/segment-events/aws-config \
    AWS_EC2_METADATA_DISABLED=true
# The entrypoint stays the base image's launcher.
