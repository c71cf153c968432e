import TapTrace
import Testing

@Suite("Trace2 line parser")
struct Trace2LineParserTests {
    static let captures = [
        "clone-sid-prefix", "def-param", "git-dir", "concurrent", "thread-regions", "signal", "error", "brief",
    ]

    @Test("every line of every real capture is one event", arguments: captures)
    func realCapturesParse(name: String) throws {
        let bytes = try Trace2Fixture.bytes(name)
        var parser = Trace2LineParser()
        let events = parser.feed(bytes) + parser.finish()
        let lines = bytes.split(separator: UInt8(ascii: "\n")).count
        #expect(events.count == lines)
        #expect(parser.counts.malformed == 0)
        #expect(parser.counts.truncated == 0)
        #expect(events.allSatisfy { !$0.sid.isEmpty && !$0.name.isEmpty })
    }

    @Test("reads split anywhere give the same events as one read")
    func splitReads() throws {
        let bytes = try Trace2Fixture.bytes("clone-sid-prefix")
        var whole = Trace2LineParser()
        let expected = whole.feed(bytes)

        var oneByte = Trace2LineParser()
        var got: [Trace2Event] = []
        for byte in bytes { got += oneByte.feed(CollectionOfOne(byte)) }
        #expect(got == expected)

        var generator = SplitMix64(seed: 42)
        for _ in 0..<20 {
            var parser = Trace2LineParser()
            var events: [Trace2Event] = []
            var offset = 0
            while offset < bytes.count {
                let size = Int(generator.next() % 97) + 1
                let end = min(bytes.count, offset + size)
                events += parser.feed(bytes[offset..<end])
                offset = end
            }
            events += parser.finish()
            #expect(events == expected)
        }

        // Every two-way split inside the first three lines (newline boundaries included).
        let head = Array(bytes.prefix(bytes.indices.filter { bytes[$0] == UInt8(ascii: "\n") }[2] + 1))
        var reference = Trace2LineParser()
        let headEvents = reference.feed(head)
        #expect(headEvents.count == 3)
        for cut in 0...head.count {
            var parser = Trace2LineParser()
            let events = parser.feed(head[..<cut]) + parser.feed(head[cut...])
            #expect(events == headEvents, "split at \(cut)")
        }
    }

    @Test("a partial last line waits for its newline; finish keeps a complete object and counts a cut one")
    func partialLastLine() throws {
        let line = Array(#"{"event":"version","sid":"s1","thread":"main","evt":"3","exe":"2.39.5"}"#.utf8)
        var parser = Trace2LineParser()
        #expect(parser.feed(line).isEmpty)
        #expect(parser.bufferedBytes == line.count)
        let events = parser.finish()
        #expect(events.map(\.name) == ["version"])
        #expect(parser.counts.truncated == 0)

        var cut = Trace2LineParser()
        #expect(cut.feed(line + [UInt8(ascii: "\n")] + line.prefix(20)).count == 1)
        #expect(cut.finish().isEmpty)
        #expect(cut.counts.truncated == 1)
        #expect(cut.counts.events == 1)
    }

    @Test("unknown events and fields are carried, not rejected, and the assembler ignores them")
    func unknownEventsAndFields() throws {
        var lines = try Trace2Fixture.bytes("git-dir")
        let sid = try Trace2Fixture.events("git-dir")[0].sid
        let extra =
            #"{"event":"from_the_future","sid":"\#(sid)","thread":"main","payload":{"a":[1,2,{"b":null}]}}"#
            + "\n"
            + #"{"event":"data","sid":"\#(sid)","thread":"main","t_abs":0.1,"nesting":1,"category":"c","key":"k","value":"v","new_field":[true,false]}"#
            + "\n"
        let atexit = lines.lastIndex(of: UInt8(ascii: "{"))!
        lines.insert(contentsOf: Array(extra.utf8), at: atexit)
        var parser = Trace2LineParser()
        let events = parser.feed(lines)
        #expect(parser.counts.malformed == 0)
        #expect(events.contains { $0.name == "from_the_future" })
        let processes = Trace2Fixture.processes(from: events)
        #expect(processes.count == 1)
        #expect(processes[0].ending == .atexit)
        #expect(processes[0].data.contains { $0.category == "c" && $0.key == "k" && $0.value == "v" })
    }

    @Test("malformed lines are skipped and counted; the lines around them still parse")
    func malformedJSON() throws {
        let good = try Trace2Fixture.bytes("def-param")
        let goodLines = good.split(separator: UInt8(ascii: "\n")).map(Array.init)
        let bad: [String] = [
            #"{"event":"start","#,  // cut short
            "not json at all",
            "[1,2,3]",  // JSON but not an object
            #"{"sid":"x","thread":"main"}"#,  // no event
            #"{"event":"exit","sid":"x","code":0}}"#,  // trailing garbage
            #"{"event":"exit","sid":"x","msg":"bad \q escape"}"#,
            "\u{01}{}",
        ]
        var stream: [UInt8] = []
        for (index, line) in goodLines.enumerated() {
            stream += line + [UInt8(ascii: "\n")]
            if index < bad.count { stream += Array(bad[index].utf8) + [UInt8(ascii: "\n")] }
        }
        stream += Array("\n   \n".utf8)
        var parser = Trace2LineParser()
        let events = parser.feed(stream) + parser.finish()
        #expect(events.count == goodLines.count)
        #expect(parser.counts.malformed == bad.count)
        #expect(parser.counts.blank == 2)
        #expect(Trace2Fixture.processes(from: events).first?.correlationIDParameter == "corr-param-2")
    }

    @Test("a line longer than the limit is dropped without being buffered")
    func oversizedLine() throws {
        var parser = Trace2LineParser(limits: .init(maximumLineBytes: 200))
        let long = Array(repeating: UInt8(ascii: "x"), count: 150)
        #expect(parser.feed(long).isEmpty)
        #expect(parser.feed(long).isEmpty)
        #expect(parser.bufferedBytes == 0)
        let next = Array(#"{"event":"version","sid":"s","thread":"main"}"#.utf8) + [UInt8(ascii: "\n")]
        let events = parser.feed(long + [UInt8(ascii: "\n")] + next)
        #expect(events.map(\.name) == ["version"])
        #expect(parser.counts.oversized == 1)
    }

    @Test("datagrams carry one event each, with or without a newline")
    func datagrams() throws {
        let bytes = try Trace2Fixture.bytes("error")
        var parser = Trace2LineParser()
        var events: [Trace2Event] = []
        for (index, line) in bytes.split(separator: UInt8(ascii: "\n")).enumerated() {
            events += parser.feedDatagram(index % 2 == 0 ? Array(line) : Array(line) + [UInt8(ascii: "\n")])
        }
        #expect(events == (try Trace2Fixture.events("error")))
    }

    @Test("event times and sids decode to the wall clock and the pid")
    func timesAndSessionIDs() throws {
        #expect(Trace2Time.parseEventTime("1970-01-01T00:00:01.5Z") == 1_500_000_000)
        #expect(Trace2Time.parseEventTime("2024-02-29T12:00:00.000001Z") == 1_709_208_000_000_001_000)
        #expect(Trace2Time.parseEventTime("2024-02-29 12:00:00Z") == nil)
        let sid = Trace2SessionID(
            "corr-1/20261125T102656.159412Z-H0a7c9cdf-P00002aad/20261125T102656.164624Z-H0a7c9cdf-P00002aaf")
        #expect(sid.pid == 0x2aaf)
        #expect(sid.parent == "corr-1/20261125T102656.159412Z-H0a7c9cdf-P00002aad")
        #expect(sid.outsidePrefix == "corr-1")
        #expect(Trace2SessionID("20261125T102656.159412Z-H0a7c9cdf-P00002aad").outsidePrefix == nil)
        #expect(sid.startUnixNano == Trace2Time.parseEventTime("2026-11-25T10:26:56.164624Z"))
    }
}
