import ArgumentParser
import Foundation
import Logging
import TapServer
import TapTrace

#if canImport(Glibc)
import Glibc
#endif

/// The `gitaly-tap` command line: argument parsing and wiring only.
@main
struct GitalyTap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gitaly-tap",
        abstract: "A transparent sidecar in front of Gitaly that records one span per gRPC call.",
        subcommands: [Proxy.self, Demo.self, Inspect.self, Replay.self, Serve.self]
    )

    /// Expands `proxy --config FILE` into arguments before parsing (flags given on the command line win).
    static func main() async {
        let given = Array(CommandLine.arguments.dropFirst())
        var options = ConfigArguments.options(fromHelp: helpMessage(for: Proxy.self, columns: 10_000))
        // The help text does not mark array options as repeatable; these take an array in the file.
        for repeatable in ["trace2-socket", "trace2-dir", "trace2-storage"] { options[repeatable] = .repeatable }
        let expanded: (arguments: [String], origins: [ConfigArguments.Origin], path: String?)
        do {
            expanded = try ConfigArguments.expand(given, subcommand: "proxy", options: options) { path in
                try String(contentsOfFile: path, encoding: .utf8)
            }
        } catch {
            FileHandleStderr.write("gitaly-tap: error: \(error)\n")
            Glibc.exit(1)
        }
        if let path = expanded.path {
            ConfigInUse.path = path
            ConfigInUse.origins = expanded.origins
            ConfigInUse.commandLine = given
            // A value from the file that the command rejects is reported with the file's line.
            do {
                _ = try parseAsRoot(expanded.arguments)
            } catch {
                let code = exitCode(for: error)
                if code != .success {
                    let message = ConfigArguments.annotate(
                        message(for: error), origins: expanded.origins, path: path, commandLine: given)
                    FileHandleStderr.write("gitaly-tap: error: \(message)\n")
                    Glibc.exit(code.rawValue)
                }
            }
        }
        await main(expanded.arguments)
    }
}

/// A user mistake, printed as one line.
struct UsageFailure: Error, CustomStringConvertible {
    var description: String
}

func makeLogger(level: String, format: String = "auto") throws -> Logger {
    guard let parsed = Logger.Level(rawValue: level) else {
        throw ValidationError("--log-level '\(level)' is not a level: use trace, debug, info, notice, warning, error or critical")
    }
    let json: Bool
    switch format {
    case "json": json = true
    case "text": json = false
    case "auto": json = isatty(STDERR_FILENO) == 0
    default: throw ValidationError("--log-format '\(format)' is not a format: use auto, json or text")
    }
    LoggingSystem.bootstrap { label in
        if json {
            var handler = JSONLogHandler(label: label)
            handler.logLevel = parsed
            return handler
        }
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = parsed
        return handler
    }
    var logger = Logger(label: "gitaly-tap")
    logger.logLevel = parsed
    return logger
}

/// The configuration file in use, so errors about its values can name its line.
enum ConfigInUse {
    nonisolated(unsafe) static var path: String?
    nonisolated(unsafe) static var origins: [ConfigArguments.Origin] = []
    nonisolated(unsafe) static var commandLine: [String] = []
}

func fail(_ message: String) -> ExitCode {
    var message = message
    if let path = ConfigInUse.path {
        message = ConfigArguments.annotateValue(
            message, origins: ConfigInUse.origins, path: path, commandLine: ConfigInUse.commandLine)
    }
    FileHandleStderr.write("gitaly-tap: error: \(message)\n")
    return ExitCode(1)
}

enum FileHandleStderr {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

struct Proxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Listen for Gitaly clients, forward every byte to the upstream Gitaly, record spans."
    )

    @Option(help: "Where clients connect: unix:/abs/path, tcp://host:port or tls://host:port.")
    var listen: String

    @Option(help: "The Gitaly to forward to: unix:/abs/path, tcp://host:port or tls://host:port.")
    var upstream: String

    @Option(help: "Span log (JSON lines): a file path, or - for standard output.")
    var spans: String = "-"

    @Option(help: "Seconds open connections may finish after SIGTERM/SIGINT.")
    var drainTimeout: Int = 30

    @Option(help: "Event-loop threads that forward and decode (default: half the cores, at least 1).")
    var threads: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Log format: json (like Gitaly's logs), text, or auto (text on a terminal, else json).")
    var logFormat: String = "auto"

    @Option(help: "Serve Prometheus /metrics and /health on tcp://host:port or unix:/path.")
    var metrics: String?

    @OptionGroup(title: "Recording")
    var recording: RecordingArguments

    @Option(help: "Certificate chain (PEM) that clients see on a tls:// --listen address.")
    var tlsCert: String?

    @Option(help: "Private key (PEM) of --tls-cert.")
    var tlsKey: String?

    @Option(help: "CA bundle (PEM) that a tls:// --upstream certificate must chain to (default: the system store).")
    var upstreamCa: String?

    @Option(help: "Name to verify in a tls:// --upstream certificate (default: the upstream host).")
    var upstreamServerName: String?

    @Option(help: "Export spans over OTLP/HTTP to this collector or Jaeger, e.g. http://127.0.0.1:4318 (posts to /v1/traces).")
    var otlp: String?

    @Option(help: "OTLP body encoding: protobuf or json.")
    var otlpEncoding: String = "protobuf"

    @Option(help: "service.name of the exported spans.")
    var serviceName: String = OTLPResource.defaultServiceName

    @Option(help: "TOML configuration file; every flag has a key of the same name (drain_timeout = 30), flags win.")
    var config: String?

    @Flag(help: "Check the settings (addresses, certificates) and print the effective ones as TOML, then exit.")
    var check = false

    /// The effective settings, as a configuration file would write them.
    var effectiveSettings: String {
        var lines: [String] = []
        func add(_ key: String, _ value: String?) { if let value { lines.append("\(key) = \"\(value)\"") } }
        add("listen", listen)
        add("upstream", upstream)
        add("spans", spans)
        lines.append("drain_timeout = \(drainTimeout)")
        if let threads { lines.append("threads = \(threads)") }
        add("log_level", logLevel)
        add("log_format", logFormat)
        add("metrics", metrics)
        add("tls_cert", tlsCert)
        add("tls_key", tlsKey)
        add("upstream_ca", upstreamCa)
        add("upstream_server_name", upstreamServerName)
        add("otlp", otlp)
        add("otlp_encoding", otlpEncoding)
        add("service_name", serviceName)
        func addList(_ key: String, _ values: [String]) {
            if !values.isEmpty { lines.append("\(key) = [" + values.map { "\"\($0)\"" }.joined(separator: ", ") + "]") }
        }
        addList("trace2_socket", trace2Socket)
        addList("trace2_dir", trace2Dir)
        addList("trace2_storage", trace2Storage)
        lines += recording.effectiveSettings
        return lines.joined(separator: "\n") + "\n"
    }

    @Option(help: "Listen for git Trace2 events on a unix socket: [stream:|dgram:]/abs/path (repeatable; see docs/trace2.md).")
    var trace2Socket: [String] = []

    @Option(help: "Watch a directory for Trace2 event files: Gitaly's $TMPDIR (gitaly-trace2*) or a git directory target (repeatable).")
    var trace2Dir: [String] = []

    @Option(help: "A Gitaly storage as NAME=/abs/path (repeatable): git processes then join an RPC by --git-dir only at the exact repository path.")
    var trace2Storage: [String] = []

    func run() async throws {
        let logger: Logger
        do {
            logger = try makeLogger(level: logLevel, format: logFormat)
        } catch {
            throw fail("\(error)")
        }
        let listenAddress: TapAddress
        let upstreamAddress: TapAddress
        do {
            listenAddress = try TapAddress(parsing: listen)
            upstreamAddress = try TapAddress(parsing: upstream)
        } catch {
            throw fail("\(error)")
        }
        var options = ProxyRunOptions(
            proxy: ProxyConfiguration(listen: listenAddress, upstream: upstreamAddress),
            spansPath: spans)
        options.drainTimeout = .seconds(drainTimeout)
        if let threads {
            guard threads >= 1 else { throw fail("--threads must be at least 1 (got \(threads))") }
            options.threads = threads
        }
        options.proxy.tls.certificatePath = tlsCert
        options.proxy.tls.keyPath = tlsKey
        options.proxy.tls.upstreamCAPath = upstreamCa
        options.proxy.tls.upstreamServerName = upstreamServerName
        if case .tls = listenAddress {} else if tlsCert != nil || tlsKey != nil {
            logger.warning("--tls-cert/--tls-key are ignored: --listen is not a tls:// address")
        }
        if case .tls = upstreamAddress {} else if upstreamCa != nil || upstreamServerName != nil {
            logger.warning("--upstream-ca/--upstream-server-name are ignored: --upstream is not a tls:// address")
        }
        if let otlp {
            do {
                options.otlp = try Self.otlpConfiguration(url: otlp, encoding: otlpEncoding, serviceName: serviceName)
            } catch {
                throw fail("\(error)")
            }
        }
        for socket in trace2Socket {
            do {
                options.trace2.sockets.append(try Trace2SocketTarget(parsing: socket))
            } catch {
                throw fail(error.description)
            }
        }
        for directory in trace2Dir {
            var isDirectory: ObjCBool = false
            guard directory.hasPrefix("/"), FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory),
                isDirectory.boolValue
            else {
                throw fail(
                    "--trace2-dir '\(directory)' must be an existing directory, given as an absolute path"
                        + " (create it, or point it at Gitaly's $TMPDIR)"
                )
            }
        }
        options.trace2.directories = trace2Dir
        for storage in trace2Storage {
            do {
                let root = try Trace2StorageRoot(parsing: storage)
                options.trace2.collector.correlator.storageRoots[root.name] = root.path
            } catch {
                throw fail(error.description)
            }
        }
        options.recording = try recording.options()
        if let metrics {
            do {
                options.metricsAddress = try TapAddress(parsing: metrics)
            } catch {
                throw fail("--metrics: \(error)")
            }
        }
        if check {
            do {
                try options.proxy.tls.check(listen: listenAddress, upstream: upstreamAddress)
            } catch {
                throw fail(error.description)
            }
            print(effectiveSettings, terminator: "")
            return
        }
        do {
            try await ProxyRuntime.run(options, logger: logger)
        } catch let error as ProxyStartError {
            throw fail(error.description)
        }
    }

    static func otlpConfiguration(url: String, encoding: String, serviceName: String) throws -> OTLPExporter.Configuration {
        let endpoint = try OTLPEndpoint(parsing: url)
        guard let parsedEncoding = OTLPEncoding(rawValue: encoding) else {
            throw UsageFailure(description: "--otlp-encoding must be protobuf or json, not '\(encoding)'")
        }
        guard !serviceName.isEmpty else { throw UsageFailure(description: "--service-name must not be empty") }
        let resource = OTLPResource(serviceName: serviceName, hostName: OTLPExporter.localHostName())
        return OTLPExporter.Configuration(endpoint: endpoint, encoding: parsedEncoding, resource: resource)
    }
}

/// `gitaly-tap demo`: the newcomer's first command (see DemoRunner).
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Clone a small repository through the tap with real git (SSH-like and HTTP-like paths over the "
            + "backchannel) and print the traces it recorded."
    )

    @Option(help: "The Go peer binary (default: $GITALY_TAP_GO_PEER, else .peers/bin/gitaly-peer).")
    var peer: String?

    @Flag(help: "Keep the scratch directory (repositories, sockets, peer logs).")
    var keep = false

    func run() async throws {
        var options = DemoOptions()
        options.peerPath = peer
        options.keepDirectory = keep
        do {
            try await DemoRunner.run(options) { print($0) }
        } catch let error as DemoError {
            throw fail(error.description)
        }
    }
}
