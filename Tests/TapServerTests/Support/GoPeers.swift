import Foundation
import Testing

/// The Go peers (Tests/Peers/go, built by scripts/install-peers.sh): a Gitaly-like upstream and Shell-like and
/// Workhorse-like backchannel clients, all driving real git.
enum GoPeers {
    /// `$GITALY_TAP_GO_PEER`, else `<repo>/.peers/bin/gitaly-peer`.
    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["GITALY_TAP_GO_PEER"], !path.isEmpty { return path }
        return Peers.repo.appendingPathComponent(".peers/bin/gitaly-peer").path
    }

    /// A missing peer fails the test, it never skips it.
    static func require() throws {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw PeerError("Go test peer not installed (\(binary) missing): run scripts/install-peers.sh")
        }
    }

    /// The upstream's listen addresses from its READY line.
    struct Upstream {
        let process: PeerProcess
        let unix: String
        let tcp: String
    }

    /// Starts the Gitaly-like upstream on `dir/gitaly.sock` and a TCP port, storage `default` = `storage`.
    static func startUpstream(
        in dir: TempDir, storage: String, trace2: String = "tempfile", environment: [String: String] = [:]
    ) async throws -> Upstream {
        try require()
        try FileManager.default.createDirectory(atPath: dir.file("tmp"), withIntermediateDirectories: true)
        let process = try PeerProcess(
            binary,
            [
                "upstream", "--listen", "unix:" + dir.file("gitaly.sock"), "--listen", "tcp://127.0.0.1:0",
                "--storage", "default=" + storage, "--trace2", trace2,
            ],
            dir: dir, name: "upstream", environment: environment.merging(["TMPDIR": dir.file("tmp")]) { _, new in new })
        let ready = try await process.waitReady()
        let listen = try readyJSON(ready)["listen"] as? [String] ?? []
        let unix = try #require(listen.first { $0.hasPrefix("unix:") })
        let tcp = try #require(listen.first { $0.hasPrefix("tcp://") })
        return Upstream(process: process, unix: unix, tcp: tcp)
    }

    /// Starts the Workhorse-like HTTP front for `target`; returns it and its base URL.
    static func startWorkhorse(in dir: TempDir, name: String, target: String, arguments: [String] = []) async throws
        -> (PeerProcess, String)
    {
        try require()
        let process = try PeerProcess(binary, ["workhorse", "--target", target] + arguments, dir: dir, name: name)
        let ready = try await process.waitReady()
        let url = try #require(try readyJSON(ready)["url"] as? String)
        return (process, url)
    }

    /// The `GIT_SSH_COMMAND` that makes git use the Shell-like client against `target`.
    static func sshCommand(target: String, arguments: [String] = []) -> String {
        ([binary, "shell", "--target", target] + arguments).map(shellQuote).joined(separator: " ")
    }

    static func readyJSON(_ line: String) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(line.dropFirst("READY ".count).utf8))
        return try #require(object as? [String: Any])
    }

    /// One JSON object per line of `path` (the peers' --stats files); empty when the file is missing.
    static func jsonLines(_ path: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }
}

func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// Runs git with a clean configuration (no user or system gitconfig).
func git(_ arguments: [String], in directory: String? = nil, environment: [String: String] = [:]) async throws
    -> CommandResult
{
    var env = environment
    env["GIT_CONFIG_GLOBAL"] = env["GIT_CONFIG_GLOBAL"] ?? "/dev/null"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    let args = (directory.map { ["-C", $0] } ?? []) + arguments
    return try await runCommand("/usr/bin/git", args, environment: env)
}

/// Runs git and fails with its stderr when it exits non-zero.
@discardableResult
func gitOK(_ arguments: [String], in directory: String? = nil, environment: [String: String] = [:]) async throws
    -> String
{
    let result = try await git(arguments, in: directory, environment: environment)
    guard result.status == 0 else {
        throw PeerError("git \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)")
    }
    return result.stdout
}

/// A bare repository `<storage>/group/proj.git` (HEAD main, a tag, a few commits with ~1 MB of incompressible
/// data so the pack is large enough to span many yamux frames).
func makeTestRepository(storage: String, scratch: String) async throws -> String {
    let source = scratch + "/source"
    let bare = storage + "/group/proj.git"
    try await gitOK(["init", "-q", "-b", "main", source])
    var generator = SeededGenerator(seed: 7)
    let identity = ["-c", "user.name=Tap Tester", "-c", "user.email=tap@example.com"]
    for i in 1...3 {
        let bytes = (0..<(350_000)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try Data(bytes).write(to: URL(fileURLWithPath: source + "/blob\(i).bin"))
        try (1...(2000 * i)).map { "line \($0) of file \(i)" }.joined(separator: "\n")
            .write(toFile: source + "/text\(i).txt", atomically: true, encoding: .utf8)
        try await gitOK(["add", "."], in: source)
        try await gitOK(identity + ["commit", "-q", "-m", "commit \(i)"], in: source)
    }
    try await gitOK(["tag", "v1.0"], in: source)
    try await gitOK(["init", "-q", "--bare", "-b", "main", bare])
    try await gitOK(["push", "-q", bare, "main", "v1.0"], in: source)
    return bare
}

/// What makes two repositories equal: their refs and every reachable object.
func repositoryFingerprint(_ path: String, refs prefix: String = "") async throws -> (refs: String, objects: String) {
    let refs = try await gitOK(
        ["for-each-ref", "--format=%(objectname) %(refname)"] + (prefix.isEmpty ? [] : [prefix]), in: path)
    let objects = try await gitOK(["rev-list", "--all", "--objects"], in: path)
    return (refs, objects.split(separator: "\n").sorted().joined(separator: "\n"))
}

/// Total size of the pack files of a (freshly cloned) repository: the pack as git received it.
func packBytes(_ repository: String) throws -> Int {
    let packDir = repository + "/.git/objects/pack"
    let names = try FileManager.default.contentsOfDirectory(atPath: packDir).filter { $0.hasSuffix(".pack") }
    return try names.reduce(0) { total, name in
        let attributes = try FileManager.default.attributesOfItem(atPath: packDir + "/" + name)
        return total + ((attributes[.size] as? NSNumber)?.intValue ?? 0)
    }
}
