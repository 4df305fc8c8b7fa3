"""The bridge: a WebSocket server turning browser JSON frames into generator gRPC streams."""
