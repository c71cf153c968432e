import TapTrace
import Testing

@Suite("Trace2 process model")
struct GitProcessModelTests {
    @Test("a real clone becomes five processes with names, hierarchy, argv, pids and exit codes")
    func cloneProcesses() throws {
        let processes = try Trace2Fixture.processes("clone-sid-prefix")
        #expect(
            processes.map(\.spanName).sorted() == [
                "git clone", "git index-pack", "git pack-objects", "git rev-list", "git upload-pack",
            ])
        let byName = Dictionary(uniqueKeysWithValues: processes.map { ($0.commandName!, $0) })
        let clone = try #require(byName["clone"])
        let uploadPack = try #require(byName["upload-pack"])
        let packObjects = try #require(byName["pack-objects"])
        #expect(packObjects.hierarchy == "clone/upload-pack/pack-objects")
        #expect(uploadPack.sid.parent == clone.sid.text)
        #expect(packObjects.sid.parent == uploadPack.sid.text)
        #expect(clone.sid.outsidePrefix == "corr-clone-1")
        #expect(processes.allSatisfy { $0.ending == .atexit && $0.exitCode == 0 && $0.pid != nil })
        #expect(processes.allSatisfy { $0.correlationIDParameter == "corr-clone-1" })
        #expect(processes.allSatisfy { $0.startUnixNano <= $0.endUnixNano })
        #expect(clone.argv.first == "git" && clone.argv.contains("--no-local"))
        #expect(uploadPack.repositoryPaths.contains { $0.hasSuffix("/storage/group/a.git") })

        // clone started upload-pack through a shell, then index-pack and rev-list directly.
        #expect(clone.children.count == 3)
        #expect(clone.children[0].useShell && clone.children[0].childClass == "transport/file")
        #expect(clone.children.allSatisfy { $0.endUnixNano != nil && $0.exitCode == 0 && $0.pid != nil })
        let indexPack = try #require(byName["index-pack"])
        #expect(clone.children.contains { $0.pid == indexPack.pid })
        #expect(uploadPack.children.first?.pid == packObjects.pid)

        // Regions nest: negotiation_v2:round sits inside fetch-pack:negotiation_v2.
        let round = try #require(clone.regions.firstIndex { $0.label == "round" })
        let parent = try #require(clone.regions[round].parent)
        #expect(clone.regions[parent].label == "negotiation_v2")
        #expect(clone.regions[round].nesting == 2)
        #expect(clone.regions[parent].startUnixNano <= clone.regions[round].startUnixNano)
        #expect(clone.regions[round].endUnixNano <= clone.regions[parent].endUnixNano)
        #expect(clone.regions.allSatisfy { !$0.unclosed && $0.startUnixNano <= $0.endUnixNano })

        // data lands in its region: pack-objects' write_pack_file/wrote inside write-pack-file.
        let wrote = try #require(packObjects.data.first { $0.key == "write_pack_file/wrote" })
        #expect(wrote.intValue != nil)
        #expect(packObjects.regions[try #require(wrote.region)].label == "write-pack-file")
    }

    @Test("regions on another thread keep their thread, and the thread gets a span")
    func threadRegions() throws {
        let process = try #require(try Trace2Fixture.processes("thread-regions").first)
        #expect(process.threads.map(\.name) == ["th01:unknown"])
        let threaded = process.regions.filter { $0.thread == "th01:unknown" }
        #expect(threaded.count == 1)
        var generator = SplitMix64(seed: 1)
        let ids = GitProcessSpanBuilder.makeIDs(for: process, using: &generator)
        let spans = GitProcessSpanBuilder.spans(
            for: process, ids: ids, traceID: TraceID(high: 1, low: 2), parent: nil, using: &generator)
        let thread = try spans.one("thread unknown")
        #expect(thread.parentSpanID == ids.process)
        let region = try #require(spans.first { $0.string("trace2.thread") == "th01:unknown" && $0.name.contains(":") })
        #expect(region.parentSpanID == thread.spanID)
    }

    @Test("thread_start/thread_exit bound the thread span; unclosed regions are closed at the process end")
    func threadEventsAndUnclosedRegions() throws {
        let sid = "20260101T000000.000000Z-H00000000-P00000001"
        func event(_ name: String, _ thread: String, _ micros: Int, _ extra: [String: JSONValue] = [:]) -> Trace2Event {
            let time = 1_767_225_600_000_000_000 + UInt64(micros) * 1000
            return Trace2Event(
                name: name, sid: sid, thread: thread, timeUnixNano: time,
                fields: extra.merging(["event": .string(name)]) { a, _ in a })
        }
        let events = [
            event("version", "main", 0),
            event("start", "main", 1, ["argv": .array([.string("git"), .string("status")])]),
            event("thread_start", "th01:preload_thread", 10),
            event(
                "region_enter", "th01:preload_thread", 11, ["category": .string("index"), "label": .string("preload")]),
            event(
                "region_leave", "th01:preload_thread", 20, ["category": .string("index"), "label": .string("preload")]),
            event("thread_exit", "th01:preload_thread", 21, ["t_rel": .number("0.000011")]),
            event("region_enter", "main", 30, ["category": .string("status"), "label": .string("print")]),
            event(
                "th_timer", "th01:preload_thread", 40,
                [
                    "category": .string("test"), "name": .string("t1"), "intervals": .number("3"),
                    "t_total": .number("0.5"),
                ]),
            event("counter", "main", 41, ["category": .string("test"), "name": .string("c1"), "count": .number("7")]),
            event("exit", "main", 50, ["code": .number("0")]),
        ]
        let processes = Trace2Fixture.processes(from: events)
        let process = try #require(processes.first)
        #expect(process.ending == .exit)  // the stream ended after exit, before atexit
        #expect(process.threads.first?.exited == true)
        #expect(process.regions.last?.unclosed == true)
        #expect(process.regions.last?.endUnixNano == process.endUnixNano)
        var generator = SplitMix64(seed: 3)
        let ids = GitProcessSpanBuilder.makeIDs(for: process, using: &generator)
        let spans = GitProcessSpanBuilder.spans(
            for: process, ids: ids, traceID: TraceID(high: 1, low: 2), parent: nil, using: &generator)
        let thread = try spans.one("thread preload_thread")
        #expect(thread.endTimeUnixNano - thread.startTimeUnixNano == 11_000)
        #expect(thread.int("trace2.timer.test.t1.intervals") == 3)
        #expect(try spans.one("index:preload").parentSpanID == thread.spanID)
        #expect(try spans.one("status:print").attributes["trace2.region.unclosed"] == .bool(true))
        #expect(try spans.one("git status").int("trace2.counter.test.c1") == 7)
    }

    @Test("a process killed by SIGPIPE ends with signal and an error status")
    func signal() throws {
        let process = try #require(try Trace2Fixture.processes("signal").first)
        #expect(process.ending == .signal)
        #expect(process.signal == 13)
        var generator = SplitMix64(seed: 8)
        let spans = GitProcessSpanBuilder.spans(
            for: process, ids: .init(process: SpanID(1)), traceID: TraceID(high: 1, low: 1), parent: nil,
            using: &generator)
        #expect(spans[0].status.code == .error)
        #expect(spans[0].string("trace2.ending") == "signal")
    }

    @Test("a failing command keeps its exit code and error message")
    func failure() throws {
        let process = try #require(try Trace2Fixture.processes("error").first)
        #expect(process.exitCode == 128)
        #expect(process.errors.count == 1)
        var generator = SplitMix64(seed: 9)
        let span = GitProcessSpanBuilder.spans(
            for: process, ids: .init(process: SpanID(1)), traceID: TraceID(high: 1, low: 1), parent: nil,
            using: &generator)[0]
        #expect(span.status.code == .error)
        #expect(span.status.message?.hasPrefix("exit code 128: ") == true)
        #expect(span.events.map(\.name) == ["git.error"])
    }

    @Test("brief mode: times are estimated and stay ordered inside the process")
    func briefMode() throws {
        let process = try #require(try Trace2Fixture.processes("brief").first)
        #expect(process.regions.count == 3)
        #expect(process.endUnixNano > process.startUnixNano)
        var previousEnd = process.startUnixNano
        for region in process.regions {
            #expect(region.startUnixNano >= previousEnd)
            #expect(region.startUnixNano <= region.endUnixNano)
            #expect(region.endUnixNano <= process.endUnixNano)
            previousEnd = region.startUnixNano
        }
    }

    @Test("credentials in argv, parameters and messages never reach a span")
    func redaction() throws {
        let sid = "20260101T000000.000000Z-H00000000-P00000002"
        let argv: [JSONValue] = [
            "git", "-c", "http.extraHeader=Authorization: Basic c2VjcmV0", "fetch",
            "https://user:hunter2@example.com/group/project.git",
        ].map { .string($0) }
        let events = [
            Trace2Event(name: "start", sid: sid, timeUnixNano: 1_000, fields: ["argv": .array(argv)]),
            Trace2Event(
                name: "def_param", sid: sid, timeUnixNano: 2_000,
                fields: ["param": "http.extraheader", "value": "Bearer tok"].mapValues { .string($0) }),
            Trace2Event(
                name: "error", sid: sid, timeUnixNano: 3_000,
                fields: ["msg": .string("could not read from https://user:hunter2@example.com/x")]),
            Trace2Event(name: "atexit", sid: sid, timeUnixNano: 4_000, fields: ["code": .number("1")]),
        ]
        let process = try #require(Trace2Fixture.processes(from: events).first)
        var generator = SplitMix64(seed: 5)
        let spans = GitProcessSpanBuilder.spans(
            for: process, ids: .init(process: SpanID(1)), traceID: TraceID(high: 1, low: 1), parent: nil,
            using: &generator)
        let text = spans.map(SpanJSONEncoder.encode).joined()
        #expect(!text.contains("c2VjcmV0"))
        #expect(!text.contains("hunter2"))
        #expect(!text.contains("Bearer tok"))
        #expect(text.contains("https://<redacted>@example.com/group/project.git"))
    }

    @Test("per-process lists are capped and the excess counted; too many open processes evict the quietest")
    func bounds() throws {
        var assembler = Trace2ProcessAssembler(limits: .init(maximumOpenProcesses: 3, maximumItemsPerProcess: 100))
        let sid = "20260101T000000.000000Z-H00000000-P00000009"
        for i in 0..<250 {
            _ = assembler.add(
                Trace2Event(
                    name: "data", sid: sid, timeUnixNano: 1_000 + UInt64(i),
                    fields: ["category": .string("c"), "key": .string("k\(i)"), "value": .number("\(i)")]),
                now: UInt64(i))
        }
        var finished: [GitProcess] = []
        for i in 0..<3 {
            let other = "20260101T000000.000000Z-H00000000-P0000010\(i)"
            for case .finished(let p) in assembler.add(
                Trace2Event(name: "version", sid: other, timeUnixNano: 5_000), now: 1_000 + UInt64(i))
            {
                finished.append(p)
            }
        }
        #expect(assembler.evicted == 1)
        let process = try #require(finished.first)
        #expect(process.sid.text == sid)
        #expect(process.data.count == 100)
        #expect(process.droppedEvents == 150)
        #expect(process.ending == .incomplete("too many open processes"))
        #expect(assembler.openCount == 3)
    }
}
