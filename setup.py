"""Packaging of the segment-events job (also used by Dataflow through --setup_file)."""

import setuptools

BEAM_VERSION = "2.77.0"

setuptools.setup(
    name="segment-events-kinesis",
    version="0.1.0",
    description="Apache Beam job: profile snapshots to segment entry/exit events on Kinesis",
    python_requires=">=3.11",  # logging.getLevelNamesMapping, datetime.UTC
    packages=setuptools.find_packages(
        include=["pipeline", "pipeline.*", "transforms", "transforms.*"]
    ),
    package_data={"": ["*.json"]},
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "boto3==1.44.8",
        "botocore==1.44.8",
        "fastavro==1.13.1",
        "pyarrow==25.0.1",
        "aws-kinesis-agg==1.2.3",
        # The columnar batch path reads Avro into Arrow (transforms/columnar/).
        "datafusion==55.0.0",
    ],
    extras_require={
        "dev": [
            "pytest==9.2.0",
            "hypothesis==6.170.17",
            "jsonschema==4.26.0",
            "ruff==0.17.6",
            "moto[server]==5.2.5",  # STS in server mode (aws-credentials tests)
        ],
        "gcp": [f"apache-beam[gcp]=={BEAM_VERSION}"],
    },
    entry_points={"console_scripts": ["segment-events=pipeline.main:main"]},
)
