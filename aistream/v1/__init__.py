"""Generated from ``proto/aistream/v1`` by ``scripts/generate.sh`` (buf). Never edit by hand.

``events_pb2`` holds the ai:* messages, ``generator_pb2_grpc`` the gRPC stubs and servicer base.
"""
