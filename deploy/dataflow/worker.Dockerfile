# The Dataflow workers' container (docs/operations/dataflow.md): Beam's Python 3.11 SDK
# image with this project and its pinned dependencies (setup.py) installed, and an AWS
# profile whose keys come from the workers' own Google identity. Build it from the
# repository root (deploy/dataflow/cloudbuild.yaml does):
#   docker build -f deploy/dataflow/worker.Dockerfile \
#     --build-arg AWS_ROLE_ARN=arn:aws:iam::ACCOUNT:role/NAME --build-arg AWS_REGION=REGION .
FROM apache/beam_python3.11_sdk:2.77.0

# The IAM role the workers assume, and the region of the STS endpoint they call.
ARG AWS_ROLE_ARN
ARG AWS_REGION

COPY setup.py /opt/segment-events/setup.py
COPY pipeline /opt/segment-events/pipeline
COPY transforms /opt/segment-events/transforms
COPY deploy/dataflow/write-aws-config.sh /opt/segment-events/write-aws-config.sh

# The image's apache-beam is the version setup.py pins, so pip keeps it and adds the rest.
RUN pip install --no-cache-dir /opt/segment-events \
    && segment-events aws-credentials --help > /dev/null \
    && /opt/segment-events/write-aws-config.sh "$AWS_ROLE_ARN" "$AWS_REGION" /etc/segment-events/aws-config

# boto3 in the SDK harness reads this profile; never probe EC2's instance metadata.
ENV AWS_CONFIG_FILE=/etc/segment-events/aws-config \
    AWS_EC2_METADATA_DISABLED=true
# The entrypoint stays Beam's SDK harness boot.
