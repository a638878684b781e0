"""The HTTP API (`labdispatch api serve`): intake, traces, replay, statistics, metrics and
the operations dashboard, behind bearer tokens."""
