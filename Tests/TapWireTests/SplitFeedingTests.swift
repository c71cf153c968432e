import NIOCore
import TapWire
import Testing

/// A real connection must decode the same however the network cut its bytes into reads.
@Suite("Real traffic split at any byte boundary")
struct SplitFeedingTests {
    private func expectSame(
        _ fixture: WireFixture, _ chunks: [Chunk], as reference: [RecordSummary], _ what: @autoclosure () -> String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let outcome = decodeConnection(chunks)
        guard outcome.records.summaries == reference, outcome.decoder.stoppedReason == nil else {
            Issue.record(
                "\(fixture.name), \(what()): got \(outcome.records.summaries) stopped \(outcome.decoder.stoppedReason ?? "no")",
                sourceLocation: sourceLocation)
            return
        }
        #expect(outcome.decoder.bytesToServer == fixture.clientToServer.count, sourceLocation: sourceLocation)
        #expect(outcome.decoder.bytesToClient == fixture.serverToClient.count, sourceLocation: sourceLocation)
    }

    @Test("two pieces split at every offset give exactly the records of the whole stream", arguments: WireFixture.names)
    func twoPiecesAtEveryOffset(name: String) throws {
        let fixture = try WireFixture.load(name)
        let reference = decodeConnection(fixture.timeline).records.summaries
        #expect(!reference.isEmpty)
        for cut in 0...fixture.totalBytes {
            expectSame(fixture, pieces(of: fixture.timeline, cutAt: [cut]), as: reference, "cut at \(cut)")
        }
    }

    @Test("one-byte pieces give exactly the records of the whole stream", arguments: WireFixture.names)
    func oneBytePieces(name: String) throws {
        let fixture = try WireFixture.load(name)
        let reference = decodeConnection(fixture.timeline).records.summaries
        let chunks = pieces(of: fixture.timeline, cutAt: Array(0...fixture.totalBytes))
        #expect(chunks.count == fixture.totalBytes)
        expectSame(fixture, chunks, as: reference, "one byte at a time")
    }

    @Test("random-size pieces (seeded) give exactly the records of the whole stream", arguments: WireFixture.names)
    func randomPieces(name: String) throws {
        let fixture = try WireFixture.load(name)
        let reference = decodeConnection(fixture.timeline).records.summaries
        var rng = SeededGenerator(seed: UInt64(truncatingIfNeeded: name.utf8.reduce(5381) { $0 &* 33 &+ Int($1) }))
        for round in 0..<100 {
            let maxPiece = [2, 7, 30, 200, 2000][round % 5]
            var cuts: [Int] = []
            var at = 0
            while at < fixture.totalBytes {
                at += Int.random(in: 1...maxPiece, using: &rng)
                cuts.append(at)
            }
            expectSame(fixture, pieces(of: fixture.timeline, cutAt: cuts), as: reference, "round \(round)")
        }
    }

    @Test("splitting only at frame boundaries and only inside frames agree with the whole stream")
    func frameBoundaries() throws {
        for fixture in try WireFixture.all() {
            let reference = decodeConnection(fixture.timeline).records.summaries
            let offsets = WireFixture.frameOffsets(in: fixture.clientToServer, skippingPreface: true)
            let c2sCutsInTimeline = offsets.filter { $0 <= fixture.timeline[0].bytes.count }
            expectSame(
                fixture, pieces(of: fixture.timeline, cutAt: c2sCutsInTimeline), as: reference,
                "client frame boundaries")
            expectSame(
                fixture, pieces(of: fixture.timeline, cutAt: c2sCutsInTimeline.map { $0 + 4 }), as: reference,
                "inside client frame headers")
        }
    }
}
