"""Tables, defined once for every backend, as numbered migrations.

Each migration is a list of statements written in portable SQL with tokens that the backend
substitutes: ``{blob}`` (BLOB / BYTEA), ``{bigint}`` (INTEGER / BIGINT) and ``{without_rowid}``
(SQLite's ``WITHOUT ROWID`` clustering; empty elsewhere — use it only for tables of small rows:
SQLite stores large rows badly in clustered tables, and audit bodies, outcomes and cached
responses are large). Migrations are
append-only: never edit a released one, add the next number. The store refuses to open a database
whose schema version is newer than the newest migration it knows.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "foundation: audit chain, checkpoints, kill switches, idempotency, request nonces",
        (
            """CREATE TABLE audit_records (
                chain TEXT NOT NULL,
                seq {bigint} NOT NULL,
                ts TEXT NOT NULL,
                kind TEXT NOT NULL,
                tenant TEXT,
                agent TEXT,
                run_id TEXT,
                tool TEXT,
                decision TEXT,
                rule_id TEXT,
                body TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL,
                PRIMARY KEY (chain, seq)
            )""",
            # Every secondary index costs a page write per append; keep only the lookups that
            # matter. Time ranges are filtered on ts while scanning in seq order.
            "CREATE INDEX audit_records_run ON audit_records (run_id) WHERE run_id IS NOT NULL",
            "CREATE INDEX audit_records_agent ON audit_records (agent)",
            "CREATE INDEX audit_records_tool ON audit_records (tool)",
            """CREATE TABLE audit_checkpoints (
                chain TEXT NOT NULL,
                seq {bigint} NOT NULL,
                hash TEXT NOT NULL,
                ts TEXT NOT NULL,
                key_id TEXT NOT NULL,
                signature TEXT NOT NULL,
                PRIMARY KEY (chain, seq)
            )""",
            """CREATE TABLE kill_switches (
                scope TEXT NOT NULL,
                target TEXT NOT NULL,
                engaged INTEGER NOT NULL,
                reason TEXT NOT NULL,
                actor TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (scope, target)
            )""",
            """CREATE TABLE idempotency_keys (
                tenant TEXT NOT NULL,
                idem_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                status TEXT NOT NULL,
                call_id TEXT NOT NULL,
                outcome TEXT,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                PRIMARY KEY (tenant, idem_key)
            )""",
            """CREATE TABLE request_nonces (
                key_id TEXT NOT NULL,
                nonce TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                PRIMARY KEY (key_id, nonce)
            )""",
            "CREATE INDEX request_nonces_expiry ON request_nonces (expires_at)",
        ),
    ),
    (
        2,
        "model response cache",
        (
            """CREATE TABLE model_cache (
                tenant TEXT NOT NULL,
                request_digest TEXT NOT NULL,
                response TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                hits {bigint} NOT NULL DEFAULT 0,
                PRIMARY KEY (tenant, request_digest)
            )""",
            "CREATE INDEX model_cache_expiry ON model_cache (expires_at)",
        ),
    ),
    (
        3,
        "ledger: budget counters, reservations, rate-limit buckets",
        (
            # Money columns are integer micro-dollars (1 USD = 1,000,000); see keel.ledger.
            # One row per (cap, key, period); spent + reserved is checked against the limit
            # by one conditional upsert. alert_* are burn-alert thresholds; alert_reservation is
            # the reservation that first reached one.
            """CREATE TABLE ledger_counters (
                tenant TEXT NOT NULL,
                cap_id TEXT NOT NULL,
                scope TEXT NOT NULL,
                cap_key TEXT NOT NULL,
                period TEXT NOT NULL,
                workflow TEXT,
                run_id TEXT,
                limit_usd {bigint},
                limit_tokens {bigint},
                limit_calls {bigint},
                spent_usd {bigint} NOT NULL DEFAULT 0,
                reserved_usd {bigint} NOT NULL DEFAULT 0,
                spent_tokens {bigint} NOT NULL DEFAULT 0,
                reserved_tokens {bigint} NOT NULL DEFAULT 0,
                spent_calls {bigint} NOT NULL DEFAULT 0,
                reserved_calls {bigint} NOT NULL DEFAULT 0,
                alert_usd {bigint},
                alert_tokens {bigint},
                alert_calls {bigint},
                alert_reservation TEXT,
                last_reservation TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (tenant, cap_id, scope, cap_key, period)
            )""",
            "CREATE INDEX ledger_counters_run ON ledger_counters (run_id) WHERE run_id IS NOT NULL",
            # status: held -> settled | released | expired (-> settled, if it settles late).
            # charges: JSON list of the counters held and by how much.
            """CREATE TABLE ledger_reservations (
                reservation_id TEXT NOT NULL PRIMARY KEY,
                tenant TEXT NOT NULL,
                agent TEXT NOT NULL,
                workflow TEXT,
                run_id TEXT,
                call_id TEXT NOT NULL,
                target TEXT NOT NULL,
                status TEXT NOT NULL,
                amount_usd {bigint} NOT NULL,
                tokens {bigint} NOT NULL,
                calls {bigint} NOT NULL,
                actual_usd {bigint},
                actual_tokens {bigint},
                charges TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                expired_at TEXT,
                finished_at TEXT
            )""",
            "CREATE INDEX ledger_reservations_held ON ledger_reservations (expires_at) "
            "WHERE status = 'held'",
            "CREATE INDEX ledger_reservations_run ON ledger_reservations (run_id) "
            "WHERE run_id IS NOT NULL",
            # Token buckets: level and capacity in units x interval_ms, refill per ms (exact).
            """CREATE TABLE rate_buckets (
                limit_id TEXT NOT NULL,
                dimension TEXT NOT NULL,
                bucket_key TEXT NOT NULL,
                capacity {bigint} NOT NULL,
                refill {bigint} NOT NULL,
                full_after_ms {bigint} NOT NULL,
                level {bigint} NOT NULL,
                updated_ms {bigint} NOT NULL,
                last_cost {bigint} NOT NULL,
                PRIMARY KEY (limit_id, dimension, bucket_key)
            ) {without_rowid}""",
        ),
    ),
    (
        4,
        "durable runs: runs, journal, payloads, approvals",
        (
            """CREATE TABLE runs (
                run_id TEXT PRIMARY KEY,
                workflow TEXT NOT NULL,
                tenant TEXT NOT NULL,
                agent TEXT NOT NULL,
                on_behalf_of TEXT,
                status TEXT NOT NULL,
                input TEXT NOT NULL,
                state TEXT,
                result TEXT,
                error TEXT,
                wake_at TEXT,
                deadline TEXT,
                lease_owner TEXT,
                lease_expires TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                parent_run TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX runs_runnable ON runs (status, wake_at)",
            "CREATE INDEX runs_workflow ON runs (workflow, created_at)",
            """CREATE TABLE journal (
                run_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                call_digest TEXT NOT NULL,
                status TEXT NOT NULL,
                outcome_ref TEXT,
                error TEXT,
                approval_id TEXT,
                wake_at TEXT,
                started_at TEXT NOT NULL,
                finished_at TEXT,
                PRIMARY KEY (run_id, step_id)
            )""",
            """CREATE TABLE payloads (
                digest TEXT PRIMARY KEY,
                encoding TEXT NOT NULL,
                size {bigint} NOT NULL,
                data {blob} NOT NULL,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE approvals (
                approval_id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                run_id TEXT,
                step_id TEXT,
                tool TEXT NOT NULL,
                binding TEXT NOT NULL,
                requested_by TEXT NOT NULL,
                on_behalf_of TEXT,
                rule_id TEXT NOT NULL,
                reason TEXT NOT NULL,
                arguments TEXT NOT NULL,
                approvals_required INTEGER NOT NULL,
                approvers TEXT NOT NULL,
                escalate_to TEXT,
                status TEXT NOT NULL,
                decisions TEXT NOT NULL,
                created_at TEXT NOT NULL,
                deadline TEXT,
                decided_at TEXT,
                token_expires TEXT,
                used_at TEXT
            )""",
            # One live request per bound call; a call refused, used or expired may ask again.
            "CREATE UNIQUE INDEX approvals_binding ON approvals (tenant, binding) "
            "WHERE status IN ('pending', 'escalated', 'approved', 'executing')",
            "CREATE INDEX approvals_status ON approvals (status, created_at)",
        ),
    ),
    (
        5,
        "indexes for claiming runs with expired leases and for approval deadlines",
        (
            "CREATE INDEX runs_leases ON runs (status, lease_expires)",
            "CREATE INDEX approvals_deadline ON approvals (status, deadline)",
            "CREATE INDEX journal_approval ON journal (approval_id)",
            "CREATE INDEX approvals_decided ON approvals (decided_at)",
        ),
    ),
    (
        6,
        "operator API keys for the HTTP server",
        (
            """CREATE TABLE operator_keys (
                key_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                tenant TEXT,
                labels TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                revoked_at TEXT,
                last_used_at TEXT
            )""",
        ),
    ),
    (
        7,
        "agent-token revocations shared by every replica",
        (
            # kind 'token': target is a token id (jti); kind 'agent': target is an agent id and
            # tokens of that agent issued before ``cutoff`` (epoch seconds) are refused. tenant
            # '*' means every tenant. A row is forgotten once every token it could refuse has
            # expired (``forget_after``, epoch seconds).
            """CREATE TABLE token_revocations (
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                tenant TEXT NOT NULL,
                reason TEXT NOT NULL,
                actor TEXT NOT NULL,
                revoked_at TEXT NOT NULL,
                cutoff {bigint} NOT NULL,
                forget_after {bigint} NOT NULL,
                PRIMARY KEY (kind, target, tenant)
            )""",
            "CREATE INDEX token_revocations_forget ON token_revocations (forget_after)",
        ),
    ),
    (
        8,
        "secrets encrypted at rest (AES-GCM under the master key) for tools and upstreams",
        (
            # ``sealed`` is nonce || ciphertext+tag; the associated data binds it to ``name``, so a
            # row copied under another name does not open. ``key_id`` names the master key used.
            """CREATE TABLE secrets (
                name TEXT PRIMARY KEY,
                sealed {blob} NOT NULL,
                key_id TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                updated_by TEXT NOT NULL
            )""",
        ),
    ),
    (
        9,
        "pinned definitions of upstream MCP tools (rug-pull detection)",
        (
            # One row per (upstream, tool): the digest of the description and schemas an operator
            # approved, and what the upstream offers now. status: 'approved', 'pending' (new, or
            # flagged at registration), 'changed' (offered digest differs: disabled until
            # re-approved), 'rejected'.
            """CREATE TABLE mcp_tool_pins (
                upstream TEXT NOT NULL,
                tool TEXT NOT NULL,
                status TEXT NOT NULL,
                approved_digest TEXT,
                offered_digest TEXT NOT NULL,
                offered TEXT NOT NULL,
                findings TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL,
                decided_by TEXT,
                decided_at TEXT,
                PRIMARY KEY (upstream, tool)
            )""",
        ),
    ),
    (
        10,
        "runs listed newest first, by tenant and by state (the dashboard and GET /v1/runs)",
        (
            "CREATE INDEX runs_created ON runs (created_at, run_id)",
            "CREATE INDEX runs_tenant ON runs (tenant, created_at, run_id)",
            "CREATE INDEX runs_status ON runs (status, created_at, run_id)",
        ),
    ),
    (
        11,
        "audit search at scale: an index per filter that keeps each chain's order, and time",
        (
            # A search of a log of one chain names that chain and wants the newest matches
            # first: (column, chain, seq) finds them without sorting every match. A partitioned
            # log orders by ts across chains, and health counts read time windows: (ts, seq,
            # kind, decision, tenant) answers both, and a time range's seq bounds, from the index.
            "DROP INDEX audit_records_agent",
            "DROP INDEX audit_records_tool",
            "CREATE INDEX audit_records_agent ON audit_records (agent, chain, seq)",
            "CREATE INDEX audit_records_tool ON audit_records (tool, chain, seq)",
            "CREATE INDEX audit_records_tenant ON audit_records (tenant, chain, seq)",
            "CREATE INDEX audit_records_rule ON audit_records (rule_id, chain, seq)",
            "CREATE INDEX audit_records_decision ON audit_records (decision, chain, seq)",
            "CREATE INDEX audit_records_ts ON audit_records (ts, seq, kind, decision, tenant)",
        ),
    ),
    (
        12,
        "hourly spend of closed hours (keel.ledger.rollup); reservations by time",
        (
            # One row per closed hour, tenant, workflow ('' outside workflows) and target; an
            # hour is listed in ledger_rollup_hours once its rows are written (even with none).
            """CREATE TABLE ledger_rollup (
                hour TEXT NOT NULL,
                tenant TEXT NOT NULL,
                workflow TEXT NOT NULL,
                target TEXT NOT NULL,
                spent_usd {bigint} NOT NULL,
                spent_tokens {bigint} NOT NULL,
                spent_calls {bigint} NOT NULL,
                reservations {bigint} NOT NULL,
                overruns {bigint} NOT NULL,
                PRIMARY KEY (hour, tenant, workflow, target)
            )""",
            """CREATE TABLE ledger_rollup_hours (
                hour TEXT PRIMARY KEY,
                closed_at TEXT NOT NULL
            )""",
            "CREATE INDEX ledger_reservations_created ON ledger_reservations (created_at)",
            "CREATE INDEX ledger_reservations_unsettled ON ledger_reservations (created_at) "
            "WHERE status IN ('held', 'expired')",
            "CREATE INDEX ledger_counters_shared ON ledger_counters (tenant, period) "
            "WHERE run_id IS NULL",
        ),
    ),
)

SCHEMA_VERSION: Final[int] = MIGRATIONS[-1][0]
