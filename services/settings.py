"""Worker configuration: one pydantic-settings tree, read from a TOML file, environment
variables and CLI flags (in rising priority).

    AUDIOGUARD_CONFIG=/etc/audioguard.toml          the file (or `--config FILE`)
    AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS=host:9092   a nested value (`__` separates levels)
    AUDIOGUARD_TENANTS='["acme","globex"]'          lists and maps as JSON

Secrets are `SecretStr`: they print as '**********' and never reach a log line.
This module reads settings; it must never open a connection.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "BatchSettings",
    "ConfigError",
    "DlqSettings",
    "KafkaSettings",
    "KinesisSettings",
    "LimitsSettings",
    "MemorySettings",
    "PubSubSettings",
    "RetrySettings",
    "Settings",
    "StorageSettings",
    "StoreSettings",
    "TenantSettings",
    "load_settings",
]


class ConfigError(ValueError):
    """The settings cannot be read: a missing, unreadable or invalid file, or an invalid value.

    Its message is one line for a person (the CLI prints it and exits 2), never a traceback.
    """


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "audioguard-workers"
    # Tansu delays a group's first join by about half the session timeout: keep it short.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 300_000
    # how quickly a newly created tenant topic matching the pattern is picked up
    metadata_refresh_ms: int = 5000
    # librdkafka's default (500 ms) holds an idle fetch that long: at low rates that is most of
    # the end-to-end latency. 50 ms costs a broker a few more empty fetches per idle partition.
    fetch_wait_max_ms: int = 50
    # finished offsets are committed asynchronously at most this often (synchronously on a
    # revoke and at close): a crash re-delivers at most this long's worth, and the verdict
    # store answers those again with the same verdicts
    commit_interval_ms: int = 200
    #: librdkafka's linger.ms for verdicts, dead letters and retries: how long a record waits
    #: for others to share its produce request
    linger_ms: float = 5.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    exactly_once: bool = False
    #: the tenant topics' max.message.bytes (Kafka's broker default): with the producer's
    #: message.max.bytes (librdkafka default 1000000, settable in `extra`) it bounds a dead letter
    topic_max_message_bytes: int = 1_048_588
    #: partition.assignment.strategy. "range" / "roundrobin" are eager: every member gives up
    #: everything on every rebalance. "cooperative-sticky" (KIP-429) moves only the partitions
    #: it reassigns, but balances partition counts over all subscribed topics, so it may put
    #: every partition of a busy tenant on one worker; on the embedded broker its two join
    #: rounds made a rolling restart's p99 2.5x worse. Measured in docs/guarantees.md.
    assignment_strategy: Literal["range", "roundrobin", "cooperative-sticky"] = "range"
    #: static membership (KIP-345, group.instance.id): a member restarted within
    #: session_timeout_ms gets its own partitions back without a rebalance. Off by default:
    #: Tansu 0.6 (the embedded broker) mishandles static members (docs/guarantees.md)
    static_membership: bool = False
    #: the group.instance.id under static membership; default: $POD_NAME, else $HOSTNAME
    group_instance_id: str | None = None
    #: extra librdkafka settings, passed through as-is (dotted keys)
    extra: dict[str, str] = Field(default_factory=dict)


class PubSubSettings(BaseModel):
    project_id: str = "audioguard-local"
    emulator_host: str | None = None
    max_messages: int = 200
    max_bytes: int = 64 * 1024 * 1024
    ack_deadline_seconds: int = 60
    max_delivery_attempts: int = 5
    #: the worker subscription has exactly-once delivery: acks wait for the server's answer
    #: (`ack_with_response`) and a refused ack means "the message comes again", never "done"
    exactly_once: bool = False


class KinesisSettings(BaseModel):
    region: str = "us-east-1"
    endpoint_url: str | None = None
    shard_count: int = 1
    poll_interval_seconds: float = 0.2
    #: share each stream's shards among several workers through a DynamoDB lease table
    #: (consumers.transports.kinesis_leases); off: every worker reads every shard (one worker per stream)
    leases: bool = False
    lease_table: str = "audioguard-kinesis-leases"
    #: a lease not renewed for this long is taken over; the heartbeat renews every third of it
    failover_seconds: float = Field(default=10.0, gt=0)
    #: DynamoDB's endpoint when it is not `endpoint_url` (moto serves both on one)
    dynamodb_endpoint_url: str | None = None


class MemorySettings(BaseModel):
    """The in-memory transport (consumers.transports.memory): a broker inside this process."""

    #: which of this process's brokers to use; settings with the same name share one
    broker: str = "default"
    #: consumer group of the worker's source
    group_id: str = "audioguard-workers"
    #: the record size a dead letter is fitted to (Kafka's producer default, so the
    #: in-process pipeline offloads what a Kafka one would)
    max_record_bytes: int = 1_000_000


class StorageSettings(BaseModel):
    #: directories file:// URIs may point into, for every tenant
    file_roots: list[Path] = Field(default_factory=list)
    #: per-tenant file:// roots; a tenant listed here may read only its own root(s)
    tenant_file_roots: dict[str, list[Path]] = Field(default_factory=dict)
    #: per-tenant allowed s3 locations, "bucket" or "bucket/prefix"
    tenant_s3_locations: dict[str, list[str]] = Field(default_factory=dict)
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    max_bytes: int = 50 * 1024 * 1024
    timeout_seconds: float = 10.0


class LimitsSettings(BaseModel):
    max_event_bytes: int = 64 * 1024
    max_audio_seconds: float = 600.0
    min_audio_seconds: float = 0.1
    #: an arrival whose submitted_at is further in the future than this is refused
    #: (`submitted_in_future`): producers' clocks drift by seconds, not by years
    max_clock_skew_seconds: float = Field(default=300.0, ge=0)


class BatchSettings(BaseModel):
    """Micro-batch bounds: released when full by windows or audio seconds, or when the
    deadline that started with its first queued item passes."""

    max_windows: int = 32
    max_audio_seconds: float = 256.0
    max_wait_ms: float = 20.0
    #: let the cap follow measured model speed in [1, max_windows] (consumers.batching.BatchSizeTuner);
    #: max_windows stays the memory bound. Off: every batch may fill to max_windows.
    adaptive: bool = True


class RetrySettings(BaseModel):
    #: in-place attempts (tenacity) for storage fetches and publishes
    attempts: int = 4
    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 2.0
    max_total_seconds: float = 15.0
    #: Kafka retry tiers' delays; after the last tier the message is dead-lettered
    tier_delays_seconds: list[float] = Field(default_factory=lambda: [10.0, 60.0, 600.0])


class DlqSettings(BaseModel):
    #: the circuit breaker: stop when this share of a window was dead-lettered ...
    max_invalid_ratio: float = 0.5
    window: int = 200
    #: ... or after this many consecutive dead letters
    max_consecutive: int = 100
    #: where a payload too large for the DLQ record is stored, keyed by its sha256: a file://
    #: or s3:// prefix naming {tenant}, e.g. "s3://audioguard-dead-letters/{tenant}". Unset (or
    #: unreachable): only the payload's first `payload_prefix_bytes` are kept, marked truncated
    payload_uri: str | None = None
    #: how much of such a payload the record itself keeps (a peek for `dlq show`)
    payload_prefix_bytes: int = Field(default=4096, ge=0)

    @model_validator(mode="after")
    def _tenant_in_payload_uri(self) -> DlqSettings:
        if self.payload_uri is None:
            return self
        # one area per tenant: a payload must never land where another tenant's replay reads
        if "{tenant}" not in self.payload_uri:
            raise ValueError("dlq.payload_uri must contain {tenant} (one dead-letter area per tenant)")
        if not self.payload_uri.startswith(("file://", "s3://")):
            raise ValueError("dlq.payload_uri must be a file:// or s3:// URI")
        return self


class StoreSettings(BaseModel):
    #: memory://, sqlite:///path/to/file.db or redis://host:port/db
    url: str = "memory://"
    ttl_seconds: int = 7 * 24 * 3600
    #: what a duplicate arrival gets: the stored verdict published again, or nothing
    on_duplicate: Literal["republish", "skip"] = "republish"
    #: crash-loop quarantine (consumers.quarantine): a message that was in progress this many
    #: times when its worker died is dead-lettered as `crashed_worker`; 0 turns it off
    quarantine_after: int = Field(default=2, ge=0)


class DatabaseSettings(BaseModel):
    #: PostgreSQL for the reporting pipeline, the API layer's keys and metering (services.database);
    #: None: those features are off and their commands say how to start one
    url: str | None = None


class ApiSettings(BaseModel):
    """The HTTP API (`api/`, `audioguard api serve`); keys and detections live in `database.url`."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: the largest request body (an upload, multipart framing included)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    #: the longest `Prefer: wait=N` honoured; a larger N is cut to this
    max_wait_seconds: float = Field(default=30.0, ge=0)
    #: where an upload is stored: a file:// or s3:// prefix naming {tenant}; None: the tenant's
    #: first storage.tenant_file_roots entry (then storage.file_roots), under "api/"
    upload_uri: str | None = None
    #: how long a verified API key is trusted before it is looked up again (a revocation takes
    #: effect within this); 0: every request looks it up
    key_cache_seconds: float = Field(default=10.0, ge=0)
    #: how long one publish of an arrival may take before the request answers 503
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    #: rate limits per client (GCRA): memory:// (this process) or redis://host:port/db (shared by
    #: every replica); requests per second and the burst allowed above it
    rate_limit_url: str = "memory://"
    rate_limit_per_second: float = Field(default=10.0, gt=0)
    rate_limit_burst: int = Field(default=20, ge=1)
    rate_limit_key_prefix: str = "audioguard"
    #: a second limit per client in seconds of uploaded audio per second (None: off), with this
    #: many seconds allowed at once; an upload over it answers 429 audio_rate_limited
    rate_limit_audio_seconds_per_second: float | None = Field(default=None, gt=0)
    rate_limit_audio_burst_seconds: int = Field(default=600, ge=1)
    #: backpressure (Kafka): when the workers' group is more than this many arrivals behind on a
    #: tenant's arrivals topic, a new detection answers 503 pipeline_backpressure (None: off)
    max_tenant_lag_messages: int | None = Field(default=None, ge=0)
    #: how long a measured lag is reused before it is measured again
    lag_refresh_seconds: float = Field(default=2.0, ge=0)
    #: webhooks (callback_url): the SSRF guard refuses loopback, private, link-local and other
    #: non-global addresses unless this is set (tests, a receiver inside the same network)
    webhook_allow_private_hosts: bool = False
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    #: deliveries tried before the webhook is dead-lettered (state "dead")
    webhook_max_attempts: int = Field(default=6, ge=1)
    webhook_initial_backoff_seconds: float = Field(default=2.0, gt=0)
    webhook_max_backoff_seconds: float = Field(default=300.0, gt=0)
    #: how much of a receiver's answer is read (the rest is dropped)
    webhook_max_response_bytes: int = Field(default=65536, ge=0)
    #: how often due webhooks are looked for
    webhook_poll_seconds: float = Field(default=0.5, gt=0)
    #: a webhook whose verdict has not come after this long is dead-lettered (reason no_verdict)
    webhook_verdict_timeout_seconds: float = Field(default=3600.0, gt=0)


class RegistrySettings(BaseModel):
    #: the model registry (services.registry): None = the embedded file registry under the data
    #: directory ($AUDIOGUARD_DATA_DIR/registry, else ~/.local/share/audioguard/registry); a
    #: directory or file:// URI; or an MLflow tracking server, http(s)://host:port
    uri: str | None = None
    #: how often a worker serving `models:/<name>@<alias>` asks whether the alias moved
    #: (0 turns hot swap off: the version resolved at start serves until a restart)
    poll_seconds: float = Field(default=5.0, ge=0)
    #: where downloaded versions are kept (MLflow backend); None: the system temp directory
    cache_dir: Path | None = None


class ShadowSettings(BaseModel):
    #: the challenger to score in shadow, e.g. `models:/audioguard-lfb-cnn@challenger` (or a
    #: directory); None: no shadow scoring. Results go to the `shadow_scores` table of
    #: `database.url`, never to a verdict topic (docs/models.md, "Shadow scoring")
    model: str | None = None
    #: share of uploads scored in shadow, per tenant with `tenant_share`; stable per upload
    share: float = Field(default=1.0, ge=0, le=1)
    tenant_share: dict[str, float] = Field(default_factory=dict)
    #: shadow batches waiting or running at most; more are skipped (the cost bound)
    max_pending_batches: int = Field(default=2, ge=0)


class TenantSettings(BaseModel):
    weight: float = 1.0
    max_in_flight: int = 64
    max_in_flight_audio_seconds: float = 1200.0
    rate_per_second: float | None = None
    burst: int = 10


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUDIOGUARD_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    #: a name in consumers.transports.registry.TRANSPORTS (a test keeps the two equal);
    #: "memory" lives inside one process (tests, the demo), never across processes
    transport: Literal["kafka", "pubsub", "kinesis", "memory"] = "kafka"
    #: tenants to serve; on Kafka, empty means every topic matching the arrivals pattern
    tenants: list[str] = Field(default_factory=list)
    #: tenants served from the shared arrivals topic `audioguard.arrivals._shared` (Kafka and
    #: memory); their records there must carry a signed `ag-tenant` header (consumers.tenancy)
    shared_tenants: list[str] = Field(default_factory=list)
    #: per-tenant HMAC secrets for that signature; held by the worker and the API layer only
    tenant_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: the model: None = the shipped artifact; a directory; or `models:/<name>@<alias>` /
    #: `models:/<name>/<version>` resolved in `registry` (an alias is watched: hot swap)
    model_path: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: what runs the network: "torch" (TorchScript trace, the default) or "onnx" (ONNX Runtime on
    #: `<artifact>/network.onnx` from `audioguard model export-onnx`; CPU or CUDA provider by
    #: `device`; the front end stays in torch). docs/models.md, "Runtimes"
    runtime: Literal["torch", "onnx"] = "torch"
    #: torch's intra-op threads for the model; None: half the cores (at most 4), leaving the rest
    #: to the fetch threads. `worker --processes N` sets cores / N in each child unless this is set.
    torch_threads: int | None = Field(default=None, ge=1)
    #: threads fetching and decoding audio
    fetch_threads: int = 4
    max_in_flight: int = 256
    max_in_flight_audio_seconds: float = 4800.0
    #: refused messages of one tenant kept in memory (in order) before its partitions are
    #: paused; they resume at a quarter of it (consumers.runner: the hysteresis). 0 pauses at
    #: the first refusal and resumes with nothing held
    max_held_events: int = 500
    max_held_bytes: int = 4 * 1024 * 1024
    #: records of one paused shared tenant held in memory before it spills its shared records
    #: to `audioguard.overflow.<tenant>` (consumers.overflow); `max_held_events` stays the
    #: bound on all held and unacknowledged spilled records, past which the shared partitions
    #: are paused (the last resort)
    shared_spill_after: int = 100
    #: on SIGTERM or a revoke: how long in-flight work may take to finish
    drain_seconds: float = 20.0
    #: after the drain: the last producer flush, the scorer stop and the consumer close; the
    #: whole shutdown is one deadline of drain_seconds + close_seconds (consumers.deadline)
    close_seconds: float = 10.0
    metrics_port: int | None = None
    #: where /metrics, /healthz and /readyz listen; `worker --processes` binds its children to
    #: 127.0.0.1 and serves the pod-facing port itself
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    pubsub: PubSubSettings = Field(default_factory=PubSubSettings)
    kinesis: KinesisSettings = Field(default_factory=KinesisSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    dlq: DlqSettings = Field(default_factory=DlqSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    tenant_defaults: TenantSettings = Field(default_factory=TenantSettings)
    tenant_overrides: dict[str, TenantSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        from schemas import validate_tenant

        for tenant in [*self.tenants, *self.shared_tenants]:
            validate_tenant(tenant)
        missing = [t for t in self.shared_tenants if not self.tenant_secrets.get(t)]
        if missing:
            raise ValueError(f"shared_tenants without a tenant_secrets entry: {', '.join(missing)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("AUDIOGUARD_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def check_config_file(config: Path) -> None:
    """ConfigError unless `config` is a readable TOML file."""
    try:
        with open(config, "rb") as handle:
            tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {config} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {config} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"config file {config} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {config} is not valid TOML: {exc}") from None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config` (TOML; else $AUDIOGUARD_CONFIG), the environment, then `overrides`.

    Raises ConfigError for a file that is missing, unreadable or not TOML, and for invalid values.
    """
    previous = os.environ.get("AUDIOGUARD_CONFIG")
    if config is None and previous:
        config = Path(previous)
    if config is None:
        return _settings(overrides)
    check_config_file(config)
    os.environ["AUDIOGUARD_CONFIG"] = str(config)
    try:
        return _settings(overrides)
    finally:
        if previous is None:
            os.environ.pop("AUDIOGUARD_CONFIG", None)
        else:
            os.environ["AUDIOGUARD_CONFIG"] = previous


def _settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']} ({exc.error_count()} error(s))") from None
