"""Generated protobuf and gRPC code for the ``mlipilot.v1`` API (protos/mlipilot/v1/).

Do not edit the ``*_pb2*`` files: change the .proto files and run ``make protos``; a test
fails when these files are stale.
"""
