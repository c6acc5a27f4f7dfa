"""Annotation rounds with Label Studio: the tasks we send, the server we talk to, the simulated annotators."""
