"""Shared helpers for the Python test peers (echo_server, echo_client, hgitaly_client).

Addresses use Gitaly's notation: ``unix:/abs/path`` or ``tcp://host:port``.
"""
import hashlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GEN_DIR = os.environ.get("TAPTEST_GEN_DIR", os.path.join(REPO, ".peers", "gen"))

MAX_MESSAGE = 64 * 1024 * 1024

# Metadata keys whose values depend on time or on the peer: left out of the
# deterministic output so direct and proxied runs print the same thing.
VOLATILE_KEYS = {"date", "server", "via", "user-agent", "x-forwarded-for"}

DEFAULT_CORRELATION_ID = "01JTAPTESTCORRELATION0000001"
DEFAULT_AUTH_HEX = "5e1f" * 16  # 64 hex digits, greppable
DEFAULT_SESSION_ID = "6f1c2a4e-9b3d-4c7e-8a5f-0d2b4c6e8f10"
DEFAULT_PARENT_SPAN_ID = "00f067aa0ba902b7"


def import_gen():
    """Make .peers/gen importable (taptest_pb2, taptest_pb2_grpc)."""
    if not os.path.isfile(os.path.join(GEN_DIR, "taptest_pb2.py")):
        sys.exit("peers: %s/taptest_pb2.py missing: run scripts/install-peers.sh" % GEN_DIR)
    if GEN_DIR not in sys.path:
        sys.path.insert(0, GEN_DIR)


def grpc_target(addr):
    """Gitaly address -> grpc target string."""
    if addr.startswith("tcp://"):
        return addr[len("tcp://"):]
    if addr.startswith("tls://"):
        return addr[len("tls://"):]
    if addr.startswith("unix:"):
        path = addr[len("unix:"):]
        if path.startswith("//"):  # unix:///abs
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError("unix address must be absolute: %r" % addr)
        return "unix:" + path
    if addr.startswith("/"):
        return "unix:" + addr
    return addr  # host:port


def add_client_args(parser, target_required=True):
    """Command-line options for the GitLab-like client metadata."""
    parser.add_argument("--target", required=target_required,
                        help="unix:/abs/path or tcp://host:port")
    parser.add_argument("--correlation-id", default=DEFAULT_CORRELATION_ID)
    parser.add_argument("--auth-hex", default=DEFAULT_AUTH_HEX,
                        help="hex part of the fake 'Bearer v2.<hex>.<ts>' token (64 hex digits)")
    parser.add_argument("--auth-ts", type=int, default=None,
                        help="timestamp of the token (default: now)")
    parser.add_argument("--trace-id", default=None,
                        help="32 hex digits: sends traceparent 00-<trace-id>-<parent-span-id>-01")
    parser.add_argument("--parent-span-id", default=DEFAULT_PARENT_SPAN_ID)
    parser.add_argument("--client-name", default="gitlab-workhorse")
    parser.add_argument("--username", default="tap-tester")
    parser.add_argument("--user-id", default="42")
    parser.add_argument("--session-id", default=DEFAULT_SESSION_ID)
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="extra metadata (repeatable)")
    parser.add_argument("--authority", default=None,
                        help="override :authority (grpc.default_authority)")
    parser.add_argument("--tls-ca", default=None,
                        help="PEM CA file: connect with TLS (use with tls:// targets)")
    parser.add_argument("--tls-server-name", default=None,
                        help="name to verify in the server certificate (default: the target host)")
    parser.add_argument("--timing", action="store_true",
                        help="add elapsed_ms to each JSON line (not deterministic)")


def client_metadata(args):
    ts = args.auth_ts if args.auth_ts is not None else int(time.time())
    md = [
        ("x-gitlab-correlation-id", args.correlation_id),
        ("x-gitlab-client-name", args.client_name),
        ("authorization", "Bearer v2.%s.%d" % (args.auth_hex, ts)),
    ]
    if args.trace_id:
        md.append(("traceparent", "00-%s-%s-01" % (args.trace_id, args.parent_span_id)))
    md += [
        ("username", args.username),
        ("user_id", args.user_id),
        ("gitaly-session-id", args.session_id),
        ("gitaly-feature-foo", "true"),
    ]
    for h in args.header:
        k, sep, v = h.partition("=")
        if not sep:
            raise SystemExit("--header wants KEY=VALUE, got %r" % h)
        md.append((k.strip().lower(), v))
    return md


def channel_options(args):
    opts = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        # Each client process gets its own connection; no retries hiding failures.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
    ]
    if args.authority:
        opts.append(("grpc.default_authority", args.authority))
    return opts


def stable_metadata(md):
    """Metadata as a sorted list of [key, value], without volatile keys; -bin values as hex."""
    out = []
    for k, v in md or ():
        if k in VOLATILE_KEYS:
            continue
        if isinstance(v, bytes):
            v = "hex:" + v.hex()
        out.append([k, v])
    out.sort()
    return out


def status_name(code):
    return code.name if code is not None else "OK"


class Digest:
    """Count and hash a sequence of byte strings."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.count = 0
        self.nbytes = 0

    def add(self, data):
        self.h.update(data)
        self.count += 1
        self.nbytes += len(data)

    def hexdigest(self):
        return self.h.hexdigest()


def open_channel(grpc, args):
    """A plain or TLS channel to --target, with channel_options(args)."""
    options = channel_options(args)
    target = grpc_target(args.target)
    if getattr(args, "tls_ca", None) or args.target.startswith("tls://"):
        root = open(args.tls_ca, "rb").read() if args.tls_ca else None
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root), options=options)
    return grpc.insecure_channel(target, options=options)
