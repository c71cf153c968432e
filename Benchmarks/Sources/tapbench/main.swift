import Foundation
import NIOCore
import NIOPosix

// tapbench upstream --unix PATH --port N [--threads N]
// tapbench run --tap PATH [--work DIR] [--label NAME] [--markdown FILE] [--quick] [--calls N] [--stream-mib N] ...

func argument(_ name: String, in args: [String]) -> String? {
    guard let index = args.firstIndex(of: name), index + 1 < args.count else { return nil }
    return args[index + 1]
}

let usage = """
    usage: tapbench run --tap PATH [options]     (Benchmarks/run.sh builds everything and runs this)
           tapbench upstream [--unix PATH] [--port N] [--threads N]

    run options:
      --tap PATH            the gitaly-tap binary to measure (release build)
      --label NAME          name of the run in the tables and in BENCHMARKS.md
      --markdown FILE       add the run's section to FILE (BENCHMARKS.md)
      --replace             overwrite FILE's section of a run with the same label (else that is an error)
      --baseline-tap PATH   also run an older gitaly-tap build, for before/after rows
      --quick               fewer calls, 256 MiB streams, short windows
      --calls N             sequential unary calls per path
      --stream-mib N        size of each server and client stream
      --window S            seconds per concurrent-unary window
      --rounds N            alternating windows per path
      --h2load N            h2load calls per path and round (0 = skip)
      --only LIST           paths besides direct: tap,tap+record,nghttpx,haproxy
      --transports LIST     unix,tcp

    """

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("tapbench: \(message)\n".utf8))
    exit(1)
}

let args = Array(CommandLine.arguments.dropFirst())
setvbuf(stdout, nil, _IOLBF, 0)
if args.contains("--help") || args.contains("-h") {
    print(usage, terminator: "")
    exit(0)
}
do {
    switch args.first {
    case "upstream":
        try Upstream.run(
            unixPath: argument("--unix", in: args), tcpPort: argument("--port", in: args).flatMap { Int($0) },
            threads: argument("--threads", in: args).flatMap { Int($0) } ?? System.coreCount)
    case "run":
        var options = BenchOptions()
        options.tap = argument("--tap", in: args) ?? options.tap
        guard FileManager.default.isExecutableFile(atPath: options.tap) else {
            fail("no gitaly-tap at \(options.tap): build it (swift build -c release) and pass --tap PATH")
        }
        options.label = argument("--label", in: args) ?? options.label
        options.baselineTap = argument("--baseline-tap", in: args)
        options.markdown = argument("--markdown", in: args)
        if let file = options.markdown, !args.contains("--replace"),
            let text = try? String(contentsOfFile: file, encoding: .utf8), text.contains("<!-- run:\(options.label) -->")
        {
            fail("\(file) already has a run labelled '\(options.label)': choose another --label, or pass --replace to overwrite it")
        }
        if args.contains("--quick") {
            options.calls = 3000
            options.streamMiB = 256
            options.windowSeconds = 0.4
            options.rounds = 1
            options.mixRounds = 2
            options.idleConnections = 200
            options.h2loadRequests = 10_000
        }
        if let value = argument("--calls", in: args).flatMap({ Int($0) }) { options.calls = value }
        if let value = argument("--stream-mib", in: args).flatMap({ Int($0) }) { options.streamMiB = value }
        if let value = argument("--window", in: args).flatMap({ Double($0) }) { options.windowSeconds = value }
        if let value = argument("--rounds", in: args).flatMap({ Int($0) }) { options.rounds = value }
        if let value = argument("--h2load", in: args).flatMap({ Int($0) }) { options.h2loadRequests = value }
        if let value = argument("--only", in: args) { options.only = Set(value.split(separator: ",").map(String.init)) }
        if let value = argument("--transports", in: args) {
            options.transports = value.split(separator: ",").map(String.init)
        }
        options.command =
            ProcessInfo.processInfo.environment["BENCH_COMMAND"] ?? ("tapbench " + args.joined(separator: " "))
        try Bench(options: options).run()
    default:
        FileHandle.standardError.write(Data(usage.utf8))
        exit(2)
    }
} catch {
    fail("\(error)")
}
