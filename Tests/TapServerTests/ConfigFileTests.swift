import Foundation
import TapServer
import Testing

/// `--config FILE`: the TOML subset, keys for every flag, flags over the file, errors naming key and line.
struct ConfigFileTests {
    @Test("the TOML subset: tables, dotted keys, strings with escapes, numbers, booleans, arrays, comments")
    func parsesTOML() throws {
        let text = """
            # a comment
            listen = "unix:/var/opt/gitlab/gitaly/tap.sock"   # trailing comment
            drain_timeout = 1_000
            ratio = 0.5
            verbose = true
            literal = 'C:\\path\\no escapes'
            escaped = "tab\\there \\u00e9 \\"quoted\\""
            list = [ "a", 'b',
              "c", # comment in an array
            ]

            [tls]
            cert = "/etc/gitlab/ssl/tap.pem"
            "quoted key".x = 0x1F
            """
        let entries = try TOMLParser.parse(text)
        let byKey = Dictionary(uniqueKeysWithValues: entries.map { ($0.path.joined(separator: "."), $0) })
        #expect(byKey["listen"]?.value == .string("unix:/var/opt/gitlab/gitaly/tap.sock"))
        #expect(byKey["listen"]?.line == 2)
        #expect(byKey["drain_timeout"]?.value == .integer(1000))
        #expect(byKey["ratio"]?.value == .float(0.5))
        #expect(byKey["verbose"]?.value == .boolean(true))
        #expect(byKey["literal"]?.value == .string("C:\\path\\no escapes"))
        #expect(byKey["escaped"]?.value == .string("tab\there é \"quoted\""))
        #expect(byKey["list"]?.value == .array([.string("a"), .string("b"), .string("c")]))
        #expect(byKey["tls.cert"]?.value == .string("/etc/gitlab/ssl/tap.pem"))
        #expect(byKey["tls.cert"]?.line == 13)
        #expect(byKey["tls.quoted key.x"]?.value == .integer(31))
    }

    @Test(
        "syntax errors name the line",
        arguments: [
            ("a = 1\nb = \"open\n", 2, "not closed"),
            ("a = 1\n\nb = {x = 1}\n", 3, "inline tables"),
            ("a = 1\na = 2\n", 2, "already set on line 1"),
            ("[t]\nx = 1\n[t]\n", 3, "defined twice"),
            ("a = yes\n", 1, "not a value"),
            ("a = 1 b = 2\n", 1, "one key = value per line"),
            ("= 1\n", 1, "expected a key"),
            ("a\n", 1, "expected '='"),
            ("[[servers]]\n", 1, "arrays of tables"),
            ("a = 1979-05-27\n", 1, "dates"),
            ("a = \"\"\"x\"\"\"\n", 1, "multi-line"),
            ("a = [1, 2\n", 1, "not closed"),
        ])
    func syntaxErrorsNameTheLine(text: String, line: Int, words: String) {
        #expect(throws: TOMLError.self) { try TOMLParser.parse(text) }
        do {
            _ = try TOMLParser.parse(text)
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.message.contains(words), "\(error)")
        }
    }

    static let options: [String: ConfigArguments.OptionKind] = [
        "listen": .value, "upstream": .value, "drain-timeout": .value, "tls-cert": .value, "check": .flag,
        "header": .repeatable, "config": .value, "help": .flag,
    ]

    @Test("keys become flags: _ for -, [table] as a prefix, switches from booleans, arrays repeat")
    func keysBecomeFlags() throws {
        let text = """
            listen = "tcp://127.0.0.1:9999"
            drain_timeout = 12
            check = true
            header = ["a=1", "b=2"]
            [tls]
            cert = "/c.pem"
            """
        let (arguments, origins) = try ConfigArguments.arguments(fromTOML: text, path: "t.toml", options: Self.options)
        #expect(
            arguments == [
                "--listen", "tcp://127.0.0.1:9999", "--drain-timeout", "12", "--check", "--header", "a=1", "--header", "b=2",
                "--tls-cert", "/c.pem",
            ])
        #expect(origins.first { $0.option == "tls-cert" }?.line == 6)
    }

    @Test(
        "mistakes in keys and types name the file, the line and the key",
        arguments: [
            ("listen = \"x\"\nlisten_addr = \"y\"\n", "config t.toml line 2: unknown key 'listen_addr'"),
            ("check = 1\n", "config t.toml line 1: 'check' is a switch"),
            ("listen = [\"a\"]\n", "config t.toml line 1: 'listen' takes a single value"),
            ("drain_timeout = true\n", "config t.toml line 1: 'drain_timeout' takes a value"),
            ("config = \"other.toml\"\n", "unknown key 'config'"),
            ("x = \"unclosed\n", "config t.toml line 1: string is not closed"),
        ])
    func keyMistakes(text: String, expected: String) {
        do {
            _ = try ConfigArguments.arguments(fromTOML: text, path: "t.toml", options: Self.options)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "\(error)")
        }
    }

    @Test("the option list is read from the command's help, so every flag has a key")
    func optionsFromHelp() async throws {
        let result = try await runCommand(try Peers.tapExecutable(), ["proxy", "--help"])
        let options = ConfigArguments.options(fromHelp: result.stdout)
        #expect(options["listen"] == .value)
        #expect(options["drain-timeout"] == .value)
        #expect(options["tls-cert"] == .value)
        #expect(options["check"] == .flag)
    }

    // MARK: The executable

    static func write(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    @Test("flags given on the command line override the file's keys")
    func flagsOverrideTheFile() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try Self.write(
            """
            listen = "unix:\(dir.file("from-file.sock"))"
            upstream = "unix:\(dir.file("gitaly.sock"))"
            drain_timeout = 7
            log_level = "debug"
            threads = 1
            """, to: dir.file("tap.toml"))
        let result = try await runCommand(
            try Peers.tapExecutable(),
            ["proxy", "--config", dir.file("tap.toml"), "--drain-timeout", "3", "--check"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("threads = 1"), "\(result.stdout)")
        #expect(result.stdout.contains("listen = \"unix:\(dir.file("from-file.sock"))\""), "\(result.stdout)")
        #expect(result.stdout.contains("drain_timeout = 3"), "the flag wins: \(result.stdout)")
        #expect(result.stdout.contains("log_level = \"debug\""), "\(result.stdout)")
        // `--config=FILE` works too, and a flag placed before --config still wins.
        let second = try await runCommand(
            try Peers.tapExecutable(), ["proxy", "--log-level", "warning", "--config=\(dir.file("tap.toml"))", "--check"])
        #expect(second.stdout.contains("log_level = \"warning\""), "\(second.stdout) \(second.stderr)")
    }

    @Test("a tap configured by file serves traffic: the file's span log, overridden by a flag")
    func configuredTapServes() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, unixAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { echo.stop() }
        try Self.write(
            """
            # gitaly-tap in front of the echo server
            listen = "unix:\(dir.file("tap.sock"))"
            upstream = "\(unixAddress)"
            spans = "\(dir.file("file-spans.jsonl"))"
            drain_timeout = 5
            """, to: dir.file("tap.toml"))
        let tap = try PeerProcess(
            try Peers.tapExecutable(), ["proxy", "--config", dir.file("tap.toml"), "--spans", dir.file("flag-spans.jsonl")],
            dir: dir, name: "tap")
        defer { tap.stop() }
        try await tap.waitForFile(dir.file("tap.sock"))
        let result = try await EchoPeerTests.client("unix:" + dir.file("tap.sock"), "unary", ["--correlation-id", "by-config"])
        #expect(result.status == 0, "\(result.stdout)")
        tap.signal(SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while !tap.exited, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let flagSpans = (try? String(contentsOfFile: dir.file("flag-spans.jsonl"), encoding: .utf8)) ?? ""
        #expect(flagSpans.contains("by-config"), "spans go to the flag's file")
        #expect(!FileManager.default.fileExists(atPath: dir.file("file-spans.jsonl")), "the file's span path was overridden")
    }

    @Test(
        "configuration mistakes are one line naming the key and the line",
        arguments: [
            ("listen = \"unix:/tmp/x.sock\"\nupstream = \"unix:/tmp/y.sock\"\nbogus = 1\n", "line 3: unknown key 'bogus'"),
            ("listen = \"unix:/tmp/x.sock\"\nupstream = \"unix:/tmp/y.sock\"\ndrain_timeout = \"soon\"\n", "line 3 (drain_timeout)"),
            ("listen = \"unix:/tmp/x.sock\"\nupstream = \"unix:/tmp/y.sock\"\n[tls]\nkey = 5\ncert = \n", "line 5: expected a value"),
            ("listen = \"unix:/tmp/x.sock\"\nupstream = \"unix:/tmp/y.sock\"\nlog_level = \"loud\"\n", "line 3 (log_level)"),
            ("listen = \"unix:/tmp/x.sock\"\nupstream = \"nope\"\n", "line 2 (upstream): address 'nope'"),
            ("listen = \"unix:/tmp/x.sock\"\nupstream = \"unix:/tmp/y.sock\"\nmetrics = \"bogus\"\ncheck = true\n", "line 3 (metrics)"),
        ])
    func mistakesAreOneLine(text: String, expected: String) async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try Self.write(text, to: dir.file("bad.toml"))
        let result = try await runCommand(try Peers.tapExecutable(), ["proxy", "--config", dir.file("bad.toml")])
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("gitaly-tap: error: config \(dir.file("bad.toml"))"), "\(result.stderr)")
        #expect(result.stderr.contains(expected), "\(result.stderr)")
    }

    @Test("a missing config file is a clear error")
    func missingFile() async throws {
        let result = try await runCommand(try Peers.tapExecutable(), ["proxy", "--config", "/nonexistent/tap.toml"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("cannot read config file /nonexistent/tap.toml"), "\(result.stderr)")
    }

    @Test("the example configurations in Config/ are valid", arguments: ["gitaly-tap.toml", "gitaly-tap-gdk.toml"])
    func examplesAreValid(name: String) async throws {
        let path = Peers.repo.appendingPathComponent("Config/\(name)").path
        let result = try await runCommand(try Peers.tapExecutable(), ["proxy", "--config", path, "--check"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("listen = "), "\(result.stdout)")
    }
}
