/// Finds the target `Repository` in a Gitaly request message without generated code.
///
/// About 90 % of Gitaly requests carry it as field 1 of the first request message (GITALY-WIRE.md §4). Many other
/// RPCs use field 1 for something else, so a candidate only counts when it is a valid protobuf message whose known
/// fields have the right wire types and UTF-8 strings, and which names a storage or a relative path.
public enum RepositoryExtractor {
    /// Where `Repository` sits in most Gitaly requests.
    public static let defaultFieldPath: [Int] = [1]

    /// Decodes the repository from a request message's bytes, or nil when the message does not carry one there.
    ///
    /// The outer message is walked until its end or its first malformed field: a repository found before that
    /// point still counts, so a capped prefix of a large first message is enough. Nested messages (the repository
    /// itself and any level of `fieldPath` above it) must be valid as a whole. A field that occurs several times is
    /// merged as protobuf does: singular strings take the last value, the repeated one accumulates.
    ///
    /// - Parameters:
    ///   - message: the first request message's payload (after gRPC's 5-byte prefix), uncompressed.
    ///   - fieldPath: field numbers from the outer message down to the repository; `[1]` for most RPCs,
    ///     e.g. `[1, 1]` for requests whose field 1 is a header message holding the repository as its field 1.
    /// - Returns: nil when the path's fields are absent or not length-delimited, the repository bytes are not valid
    ///   protobuf, a string is not UTF-8, both `storage_name` and `relative_path` are empty, or either holds a
    ///   control character (the mark of a different message read as a repository).
    public static func extract(
        fromRequest message: some RandomAccessCollection<UInt8>,
        fieldPath: [Int] = defaultFieldPath
    ) -> GitalyRepository? {
        guard !fieldPath.isEmpty, fieldPath.allSatisfy({ $0 > 0 && $0 <= maxFieldNumber }) else { return nil }
        let numbers = fieldPath.map { UInt32($0) }
        if let found = message.withContiguousStorageIfAvailable({ extract(in: $0, fieldPath: numbers) }) {
            return found
        }
        return Array(message).withUnsafeBufferPointer { extract(in: $0, fieldPath: numbers) }
    }

    private static let maxFieldNumber = (1 << 29) - 1

    private enum RepositoryField {
        static let storageName: UInt32 = 2
        static let relativePath: UInt32 = 3
        static let gitObjectDirectory: UInt32 = 4
        static let gitAlternateObjectDirectories: UInt32 = 5
        static let glRepository: UInt32 = 6
        static let glProjectPath: UInt32 = 8
    }

    private static func extract(in bytes: UnsafeBufferPointer<UInt8>, fieldPath: [UInt32]) -> GitalyRepository? {
        var pieces = [0..<bytes.count]
        for (depth, number) in fieldPath.enumerated() {
            var found: [Range<Int>] = []
            for piece in pieces {
                var reader = ProtobufWireReader(bytes, range: piece)
                while true {
                    let field: ProtobufField?
                    do {
                        field = try reader.nextField()
                    } catch {
                        guard depth == 0 else { return nil }
                        break
                    }
                    guard let field else { break }
                    guard field.number == number else { continue }
                    guard case .lengthDelimited(let payload) = field.value else { return nil }
                    found.append(payload)
                }
            }
            guard !found.isEmpty else { return nil }
            pieces = found
        }
        return decodeRepository(in: bytes, pieces: pieces)
    }

    /// Decodes the occurrences of one `Repository` field as one merged message.
    private static func decodeRepository(
        in bytes: UnsafeBufferPointer<UInt8>,
        pieces: [Range<Int>]
    ) -> GitalyRepository? {
        var repository = GitalyRepository()
        for piece in pieces {
            var reader = ProtobufWireReader(bytes, range: piece)
            do {
                while let field = try reader.nextField() {
                    let target: WritableKeyPath<GitalyRepository, String>
                    switch field.number {
                    case RepositoryField.storageName: target = \.storageName
                    case RepositoryField.relativePath: target = \.relativePath
                    case RepositoryField.gitObjectDirectory: target = \.gitObjectDirectory
                    case RepositoryField.glRepository: target = \.glRepository
                    case RepositoryField.glProjectPath: target = \.glProjectPath
                    case RepositoryField.gitAlternateObjectDirectories:
                        guard let text = string(field, in: bytes) else { return nil }
                        repository.gitAlternateObjectDirectories.append(text)
                        continue
                    default:
                        continue
                    }
                    guard let text = string(field, in: bytes) else { return nil }
                    repository[keyPath: target] = text
                }
            } catch {
                return nil
            }
        }
        guard !repository.storageName.isEmpty || !repository.relativePath.isEmpty,
            isPlainText(repository.storageName), isPlainText(repository.relativePath)
        else { return nil }
        return repository
    }

    /// Storage names and relative paths never hold control characters, but an embedded message read as a string
    /// does (its tags are bytes like 0x0A): this is what rejects, say, a request header whose field 2 is a `User`.
    private static func isPlainText(_ text: String) -> Bool {
        !text.utf8.contains { $0 < 0x20 || $0 == 0x7F }
    }

    /// The field's payload as a string; nil when the field is not length-delimited or the bytes are not UTF-8.
    private static func string(_ field: ProtobufField, in bytes: UnsafeBufferPointer<UInt8>) -> String? {
        guard case .lengthDelimited(let range) = field.value else { return nil }
        let payload = UnsafeBufferPointer(rebasing: bytes[range])
        let text = String(decoding: payload, as: UTF8.self)
        // Decoding replaces invalid sequences, so a lossless round trip is exactly "valid UTF-8".
        return text.utf8.elementsEqual(payload) ? text : nil
    }
}
