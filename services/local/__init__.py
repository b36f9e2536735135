"""Embedded servers for development and tests: the Kafka-compatible broker (Tansu), Google's
Pub/Sub emulator and moto_server, each started as a subprocess on a loopback port."""
