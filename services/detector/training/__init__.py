"""Offline model building: data sources, the recording channel, vocoders, training, evaluation,
the shortcut probe and artifact export. Only the `audioguard data|train|eval` commands reach
this package; the worker never imports it."""
