"""The JSON events of the Kinesis destination: formatting, identities, timestamps."""
