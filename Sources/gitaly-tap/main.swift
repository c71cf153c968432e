import ArgumentParser
import Logging
import TapServer

#if canImport(Glibc)
import Glibc
#endif

/// The `gitaly-tap` command line: argument parsing and wiring only.
@main
struct GitalyTap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gitaly-tap",
        abstract: "A transparent sidecar in front of Gitaly that records one span per gRPC call.",
        subcommands: [Proxy.self, Inspect.self, Replay.self, Serve.self]
    )
}

/// A user mistake, printed as one line.
struct UsageFailure: Error, CustomStringConvertible {
    var description: String
}

func makeLogger(level: String, format: String = "auto") throws -> Logger {
    guard let parsed = Logger.Level(rawValue: level) else {
        throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
    }
    let json: Bool
    switch format {
    case "json": json = true
    case "text": json = false
    case "auto": json = isatty(STDERR_FILENO) == 0
    default: throw ValidationError("--log-format must be auto, json or text")
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

func fail(_ message: String) -> ExitCode {
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

    @Option(help: "Where clients connect: unix:/abs/path or tcp://host:port.")
    var listen: String

    @Option(help: "The Gitaly to forward to: unix:/abs/path or tcp://host:port.")
    var upstream: String

    @Option(help: "Span log (JSON lines): a file path, or - for standard output.")
    var spans: String = "-"

    @Option(help: "Seconds open connections may finish after SIGTERM/SIGINT.")
    var drainTimeout: Int = 30

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Option(help: "Log format: json (like Gitaly's logs), text, or auto (text on a terminal, else json).")
    var logFormat: String = "auto"

    @Option(help: "Serve Prometheus /metrics and /health on tcp://host:port or unix:/path.")
    var metrics: String?

    @OptionGroup(title: "Recording")
    var recording: RecordingArguments

    func run() async throws {
        let logger = try makeLogger(level: logLevel, format: logFormat)
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
        if let metrics {
            do {
                options.metricsAddress = try TapAddress(parsing: metrics)
            } catch {
                throw fail("--metrics: \(error)")
            }
        }
        options.recording = try recording.options()
        do {
            try await ProxyRuntime.run(options, logger: logger)
        } catch let error as ProxyStartError {
            throw fail(error.description)
        }
    }
}
