import Foundation
import NIOCore
import NIOPosix

// tapbench upstream --unix PATH --port N [--threads N]
// tapbench run --tap PATH [--work DIR] [--label NAME] [--markdown FILE] [--quick] [--calls N] [--stream-mib N] ...

func argument(_ name: String, in args: [String]) -> String? {
    guard let index = args.firstIndex(of: name), index + 1 < args.count else { return nil }
    return args[index + 1]
}

let args = Array(CommandLine.arguments.dropFirst())
setvbuf(stdout, nil, _IOLBF, 0)
switch args.first {
case "upstream":
    try Upstream.run(
        unixPath: argument("--unix", in: args), tcpPort: argument("--port", in: args).flatMap { Int($0) },
        threads: argument("--threads", in: args).flatMap { Int($0) } ?? System.coreCount)
case "run":
    var options = BenchOptions()
    options.tap = argument("--tap", in: args) ?? options.tap
    options.label = argument("--label", in: args) ?? options.label
    options.baselineTap = argument("--baseline-tap", in: args)
    options.markdown = argument("--markdown", in: args)
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
    if let value = argument("--transports", in: args) { options.transports = value.split(separator: ",").map(String.init) }
    options.command = ProcessInfo.processInfo.environment["BENCH_COMMAND"] ?? ("tapbench " + args.joined(separator: " "))
    try Bench(options: options).run()
default:
    FileHandle.standardError.write("usage: tapbench upstream --unix PATH --port N | tapbench run --tap PATH [...]\n".data(using: .utf8)!)
    exit(2)
}
