#!/bin/sh
# Writes the AWS config of the Dataflow images (run by both Dockerfiles at build time):
# one profile, [default], whose credentials come from the machine's own Google identity
# through `segment-events aws-credentials` (pipeline/aws_credentials.py), and the region
# of the STS endpoint it calls. No key is stored anywhere.
#   usage: write-aws-config.sh ROLE_ARN REGION FILE
set -eu
role_arn="${1:-}"
region="${2:-}"
file="${3:?the config file to write}"
if ! printf '%s' "$role_arn" | grep -Eq '^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$'; then
  echo "error: build with --build-arg AWS_ROLE_ARN=arn:aws:iam::ACCOUNT:role/NAME" >&2
  exit 1
fi
if ! printf '%s' "$region" | grep -Eq '^[a-z]{2}(-[a-z]+)+-[0-9]+$'; then
  echo "error: build with --build-arg AWS_REGION=REGION (the stream's, e.g. eu-west-1)" >&2
  exit 1
fi
mkdir -p "$(dirname "$file")"
printf '[default]\ncredential_process = segment-events aws-credentials --role-arn %s\nregion = %s\n' \
  "$role_arn" "$region" > "$file"
chmod 0644 "$file"
