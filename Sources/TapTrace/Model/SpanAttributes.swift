/// A span's (or span event's) attributes: key–value pairs with unique keys, kept in the order they were first set.
///
/// A small array rather than a `Dictionary`: a span carries 10–40 attributes, is built once on the span path and read
/// a few times. Hashing every key on insert and again when the span log orders them cost about 9 % of the tap's CPU
/// per unary call (perf, 64 concurrent streams); appending to an array and scanning it costs a fraction of that.
///
/// It reads like a dictionary (`attributes["rpc.method"]`, `for (key, value) in attributes`, dictionary literals);
/// equality ignores the order, as a dictionary's does.
public struct SpanAttributes: Sendable, Equatable, Sequence, ExpressibleByDictionaryLiteral {
    public typealias Element = (key: String, value: AttributeValue)

    /// The pairs in the order their keys were first set.
    public private(set) var pairs: [Element]

    /// No attributes.
    public init() { pairs = [] }

    /// Attributes from a literal; a repeated key keeps its last value.
    public init(dictionaryLiteral elements: (String, AttributeValue)...) {
        pairs = []
        pairs.reserveCapacity(elements.count)
        for (key, value) in elements { self[key] = value }
    }

    /// Attributes from key–value pairs; a repeated key keeps its last value.
    public init<S: Sequence>(_ elements: S) where S.Element == (key: String, value: AttributeValue) {
        pairs = []
        for (key, value) in elements { self[key] = value }
    }

    /// How many attributes there are.
    public var count: Int { pairs.count }
    /// True when there are none.
    public var isEmpty: Bool { pairs.isEmpty }
    /// The keys, in the order they were first set.
    public var keys: [String] { pairs.map(\.key) }
    /// The values, in the order of ``keys``.
    public var values: [AttributeValue] { pairs.map(\.value) }

    /// Where `key` is in ``pairs``.
    public func index(of key: String) -> Int? { pairs.firstIndex { $0.key == key } }

    /// The value for `key`; setting nil removes the key, setting a new key appends it.
    public subscript(key: String) -> AttributeValue? {
        get { index(of: key).map { pairs[$0].value } }
        set {
            if let index = index(of: key) {
                if let newValue { pairs[index].value = newValue } else { pairs.remove(at: index) }
            } else if let newValue {
                pairs.append((key, newValue))
            }
        }
    }

    /// Adds a key the attributes do not have yet, without looking for it first: for builders that set each of their
    /// keys once. Setting an existing key this way is a programming error (checked in debug builds).
    public mutating func append(_ key: String, _ value: AttributeValue) {
        assert(index(of: key) == nil, "attribute \(key) set twice")
        pairs.append((key, value))
    }

    /// Room for `capacity` attributes without growing.
    public mutating func reserveCapacity(_ capacity: Int) { pairs.reserveCapacity(capacity) }

    /// Adds the attributes of `other`; for a key both have, `combine` picks the value (as `Dictionary.merge`).
    public mutating func merge(
        _ other: SpanAttributes, uniquingKeysWith combine: (AttributeValue, AttributeValue) throws -> AttributeValue
    ) rethrows {
        for (key, value) in other.pairs {
            if let index = index(of: key) {
                pairs[index].value = try combine(pairs[index].value, value)
            } else {
                pairs.append((key, value))
            }
        }
    }

    public func makeIterator() -> IndexingIterator<[Element]> { pairs.makeIterator() }

    /// Same keys with the same values, in any order.
    public static func == (lhs: SpanAttributes, rhs: SpanAttributes) -> Bool {
        guard lhs.count == rhs.count else { return false }
        for (index, pair) in lhs.pairs.enumerated() {
            // Usually the same order: try the same position before scanning.
            if index < rhs.pairs.count, rhs.pairs[index].key == pair.key {
                guard rhs.pairs[index].value == pair.value else { return false }
            } else if rhs[pair.key] != pair.value {
                return false
            }
        }
        return true
    }
}
