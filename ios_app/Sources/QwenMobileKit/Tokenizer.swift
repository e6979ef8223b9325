import Foundation

/// Byte-level BPE over a Hugging Face `tokenizer.json` (the GPT-2 / Qwen family): added tokens split out first,
/// NFC normalisation, the split regex of the pre-tokenizer (Qwen's pattern, run by NSRegularExpression), the
/// byte-to-unicode map, then merges by rank. Only what Qwen's tokenizers use is accepted; anything else in the file
/// (another model type, normalizer, pre-tokenizer or added-token option) is refused by name at load, never ignored.
public final class BPETokenizer {
  public struct AddedToken {
    public let id: Int
    public let content: String
    public let special: Bool
  }

  public let vocabSize: Int
  public let addedTokens: [AddedToken]
  private let vocab: [String: Int]
  private let idToToken: [Int: String]
  private let mergeRanks: [String: Int]  // "left\u{1}right" -> rank
  private let splitRegex: NSRegularExpression
  private let normalizeNFC: Bool
  private let ignoreMerges: Bool
  private let addedByContent: [String: AddedToken]
  private let addedByID: [Int: AddedToken]
  private let addedFirstScalars: Set<Unicode.Scalar>
  private let byteToChar: [Character]
  private let charToByte: [Character: UInt8]
  private var cache: [String: [Int]] = [:]
  private let source: String

  /// GPT-2's pattern, used by a ByteLevel pre-tokenizer with `use_regex: true`.
  static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

  public convenience init(url: URL) throws {
    try self.init(json: try JSONNode.load(url))
  }

  public init(json root: JSONNode) throws {
    source = root.source
    let model = root["model"]
    let type = try model["type"].string()
    guard type == "BPE" else { throw model["type"].fail("'\(type)': only byte-level BPE tokenizers are supported") }
    if model["byte_fallback"].exists, try model["byte_fallback"].bool() {
      throw model["byte_fallback"].fail("byte_fallback is not supported (byte-level BPE never needs it)")
    }
    ignoreMerges = model["ignore_merges"].exists ? try model["ignore_merges"].bool() : false
    var vocab: [String: Int] = [:]
    for (token, id) in try model["vocab"].object() {
      guard let n = id as? NSNumber else { throw model["vocab"][token].fail("expected an integer id") }
      vocab[token] = n.intValue
    }
    var ranks: [String: Int] = [:]
    for (rank, merge) in try model["merges"].array().enumerated() {
      let pair: [String]
      if let s = merge.value as? String {
        // Older files: "left right" (byte-level symbols never contain a space).
        pair = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
      } else {
        pair = try merge.array().map { try $0.string() }
      }
      guard pair.count == 2 else { throw merge.fail("a merge must be two symbols") }
      let key = pair[0] + "\u{1}" + pair[1]
      if ranks[key] == nil { ranks[key] = rank }
    }
    mergeRanks = ranks

    var added: [AddedToken] = []
    for node in root["added_tokens"].exists ? try root["added_tokens"].array() : [] {
      for flag in ["lstrip", "rstrip", "single_word"] where node[flag].exists {
        if try node[flag].bool() { throw node[flag].fail("added-token option \(flag) is not supported") }
      }
      let token = AddedToken(
        id: try node["id"].int(), content: try node["content"].string(),
        special: node["special"].exists ? try node["special"].bool() : false)
      added.append(token)
      vocab[token.content] = token.id
    }
    addedTokens = added
    addedByContent = Dictionary(added.map { ($0.content, $0) }, uniquingKeysWith: { a, _ in a })
    addedByID = Dictionary(added.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    addedFirstScalars = Set(added.compactMap { $0.content.unicodeScalars.first })
    self.vocab = vocab
    idToToken = Dictionary(vocab.map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
    vocabSize = (vocab.values.max() ?? -1) + 1

    let normalizer = root["normalizer"]
    if !normalizer.exists {
      normalizeNFC = false
    } else {
      let kind = try normalizer["type"].string()
      guard kind == "NFC" else { throw normalizer["type"].fail("normalizer '\(kind)' is not supported (NFC or none)") }
      normalizeNFC = true
    }
    splitRegex = try BPETokenizer.splitPattern(root["pre_tokenizer"])
    (byteToChar, charToByte) = BPETokenizer.byteLevelMap()
  }

  /// The one split regex of the supported pre-tokenizers: Sequence[Split(Regex, Isolated), ByteLevel(use_regex:
  /// false)] (Qwen) or ByteLevel(use_regex: true) (GPT-2).
  static func splitPattern(_ node: JSONNode) throws -> NSRegularExpression {
    let type = try node["type"].string()
    var pattern: String
    if type == "ByteLevel" {
      guard try node["use_regex"].bool() else {
        throw node["use_regex"].fail("a ByteLevel pre-tokenizer alone must split")
      }
      if try node["add_prefix_space"].bool() {
        throw node["add_prefix_space"].fail("add_prefix_space is not supported")
      }
      pattern = gpt2Pattern
    } else if type == "Sequence" {
      let steps = try node["pretokenizers"].array()
      guard steps.count == 2, try steps[0]["type"].string() == "Split", try steps[1]["type"].string() == "ByteLevel"
      else { throw node["pretokenizers"].fail("expected [Split, ByteLevel] (the Qwen pre-tokenizer)") }
      let split = steps[0]
      guard try split["behavior"].string() == "Isolated" else {
        throw split["behavior"].fail("only Isolated is supported")
      }
      if split["invert"].exists, try split["invert"].bool() { throw split["invert"].fail("invert is not supported") }
      pattern = try split["pattern"]["Regex"].string()
      if try steps[1]["use_regex"].bool() { throw steps[1]["use_regex"].fail("a second regex split is not supported") }
      if try steps[1]["add_prefix_space"].bool() {
        throw steps[1]["add_prefix_space"].fail("add_prefix_space is not supported")
      }
    } else {
      throw node["type"].fail("pre-tokenizer '\(type)' is not supported (Qwen's Sequence or ByteLevel)")
    }
    do {
      return try NSRegularExpression(pattern: icuPattern(fromRust: pattern), options: [])
    } catch {
      throw node.fail("the split regex does not compile with NSRegularExpression: \(error)")
    }
  }

  /// Rust's `\s` is Unicode White_Space; ICU's is [\t\n\f\r\p{Z}], which lacks U+000B and U+0085. Spell the Rust
  /// set out so both engines split the same text the same way.
  static func icuPattern(fromRust pattern: String) -> String {
    let space = #"\t\n\x{0B}\f\r\x{85}\p{Z}"#
    var out = ""
    var inClass = false
    var chars = Array(pattern)[...]
    while let c = chars.popFirst() {
      if c == "\\", let next = chars.popFirst() {
        switch (next, inClass) {
        case ("s", true): out += space
        case ("s", false): out += "[\(space)]"
        case ("S", false): out += "[^\(space)]"
        case ("S", true): out += #"\S"#  // not in Qwen's patterns; ICU's meaning kept
        default: out += "\\\(next)"
        }
        continue
      }
      if c == "[" && !inClass {
        inClass = true
      } else if c == "]" && inClass {
        inClass = false
      }
      out.append(c)
    }
    return out
  }

  static func byteLevelMap() -> ([Character], [Character: UInt8]) {
    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards in byte order.
    var printable = Set<Int>()
    for r in [0x21...0x7E, 0xA1...0xAC, 0xAE...0xFF] { printable.formUnion(r) }
    var table = [Character](repeating: " ", count: 256)
    var next = 0
    for b in 0..<256 {
      if printable.contains(b) {
        table[b] = Character(Unicode.Scalar(UInt32(b))!)
      } else {
        table[b] = Character(Unicode.Scalar(UInt32(256 + next))!)
        next += 1
      }
    }
    var inverse: [Character: UInt8] = [:]
    for (b, c) in table.enumerated() { inverse[c] = UInt8(b) }
    return (table, inverse)
  }

  // MARK: encode

  /// Token ids of `text` (no BOS/EOS added: Qwen adds none). Added tokens in the text are matched literally.
  public func encode(_ text: String) throws -> [Int] {
    var ids: [Int] = []
    for (piece, isAdded) in splitOnAddedTokens(text) {
      if isAdded {
        ids.append(addedByContent[piece]!.id)
      } else if !piece.isEmpty {
        try ids.append(contentsOf: encodeOrdinary(piece))
      }
    }
    return ids
  }

  /// Leftmost-longest matches of the added tokens, as the Hugging Face tokenizer splits them.
  func splitOnAddedTokens(_ text: String) -> [(String, Bool)] {
    guard !addedByContent.isEmpty else { return [(text, false)] }
    let scalars = Array(text.unicodeScalars)
    var out: [(String, Bool)] = []
    var plain = String.UnicodeScalarView()
    var i = 0
    let contents = addedByContent.keys.map { Array($0.unicodeScalars) }.sorted { $0.count > $1.count }
    while i < scalars.count {
      var matched: [Unicode.Scalar]? = nil
      if addedFirstScalars.contains(scalars[i]) {
        for candidate in contents where candidate.count <= scalars.count - i {
          if candidate.elementsEqual(scalars[i..<(i + candidate.count)]) {
            matched = candidate
            break
          }
        }
      }
      if let m = matched {
        if !plain.isEmpty { out.append((String(plain), false)) }
        plain = String.UnicodeScalarView()
        var s = String.UnicodeScalarView()
        s.append(contentsOf: m)
        out.append((String(s), true))
        i += m.count
      } else {
        plain.append(scalars[i])
        i += 1
      }
    }
    if !plain.isEmpty { out.append((String(plain), false)) }
    return out
  }

  func encodeOrdinary(_ text: String) throws -> [Int] {
    let normalized = normalizeNFC ? text.precomposedStringWithCanonicalMapping : text
    var ids: [Int] = []
    for word in preTokenize(normalized) {
      if let cached = cache[word] {
        ids.append(contentsOf: cached)
        continue
      }
      let wordIDs = try bpe(word)
      if cache.count < 50_000 { cache[word] = wordIDs }
      ids.append(contentsOf: wordIDs)
    }
    return ids
  }

  /// The split regex's matches and the text between them, each as byte-level symbols (one Character per byte).
  func preTokenize(_ text: String) -> [String] {
    let ns = text as NSString
    var pieces: [String] = []
    var last = 0
    for match in splitRegex.matches(in: text, options: [], range: NSRange(location: 0, length: ns.length)) {
      if match.range.length == 0 { continue }
      if match.range.location > last {
        pieces.append(ns.substring(with: NSRange(location: last, length: match.range.location - last)))
      }
      pieces.append(ns.substring(with: match.range))
      last = match.range.location + match.range.length
    }
    if last < ns.length { pieces.append(ns.substring(from: last)) }
    return pieces.map { piece in String(piece.utf8.map { byteToChar[Int($0)] }) }
  }

  func bpe(_ word: String) throws -> [Int] {
    if ignoreMerges, let id = vocab[word] { return [id] }
    var symbols = word.map { String($0) }
    while symbols.count > 1 {
      var best = Int.max
      var bestAt = -1
      for i in 0..<(symbols.count - 1) {
        if let rank = mergeRanks[symbols[i] + "\u{1}" + symbols[i + 1]], rank < best {
          best = rank
          bestAt = i
        }
      }
      if bestAt < 0 { break }
      // Merge every occurrence of the best pair, left to right (what the rank queue does for equal ranks).
      let left = symbols[bestAt]
      let right = symbols[bestAt + 1]
      var merged: [String] = []
      merged.reserveCapacity(symbols.count)
      var i = 0
      while i < symbols.count {
        if i < symbols.count - 1 && symbols[i] == left && symbols[i + 1] == right {
          merged.append(left + right)
          i += 2
        } else {
          merged.append(symbols[i])
          i += 1
        }
      }
      symbols = merged
    }
    return try symbols.map { symbol in
      guard let id = vocab[symbol] else {
        throw BundleError("\(source): symbol '\(symbol)' is not in the vocabulary (no unk token to map it to)")
      }
      return id
    }
  }

  // MARK: decode

  /// Text of `ids`, special tokens included (like `decode(ids, skip_special_tokens=False)`); invalid UTF-8 (a
  /// multi-byte character cut between tokens) becomes U+FFFD, as in Python.
  public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
    var bytes: [UInt8] = []
    for id in ids {
      if let added = addedByID[id] {
        if !(skipSpecial && added.special) { bytes.append(contentsOf: Array(added.content.utf8)) }
        continue
      }
      guard let token = idToToken[id] else { continue }
      for ch in token {
        if let b = charToByte[ch] { bytes.append(b) } else { bytes.append(contentsOf: Array(String(ch).utf8)) }
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  /// Bytes of one token, for streaming: a character split over tokens is emitted once it is complete.
  public func tokenBytes(_ id: Int) -> [UInt8] {
    if let added = addedByID[id] { return Array(added.content.utf8) }
    guard let token = idToToken[id] else { return [] }
    return token.flatMap { ch in charToByte[ch].map { [$0] } ?? Array(String(ch).utf8) }
  }

  public func id(of token: String) -> Int? { vocab[token] }
}

/// Turns a stream of token ids into text pieces, holding back bytes of a character that is not complete yet.
public struct StreamingDecoder {
  private var buffer: [UInt8] = []
  public init() {}

  public mutating func append(_ bytes: [UInt8]) -> String {
    buffer.append(contentsOf: bytes)
    // Keep back at most 3 trailing bytes of an unfinished UTF-8 sequence.
    var cut = buffer.count
    var back = 0
    while back < min(4, buffer.count) {
      let b = buffer[buffer.count - 1 - back]
      if b & 0xC0 == 0x80 {
        back += 1
        continue
      }
      if b & 0x80 != 0 {
        let need = b & 0xE0 == 0xC0 ? 2 : b & 0xF0 == 0xE0 ? 3 : b & 0xF8 == 0xF0 ? 4 : 1
        if back + 1 < need { cut = buffer.count - 1 - back }
      }
      break
    }
    let text = String(decoding: buffer[..<cut], as: UTF8.self)
    buffer.removeFirst(cut)
    return text
  }

  public mutating func flush() -> String {
    defer { buffer.removeAll() }
    return String(decoding: buffer, as: UTF8.self)
  }
}
