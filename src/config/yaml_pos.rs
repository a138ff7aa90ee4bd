//! Where each value sits in a YAML (or JSON) file.
//!
//! serde gives us typed values but forgets positions once decoding succeeded; validation errors need
//! them. So the text is also parsed into a small positioned tree (with `saphyr-parser`, which reports
//! line and column for every event) and flattened into an index from field path
//! (`services.kube-api.secrets_encryption_config.custom_config.resources[0].providers[1]`) to position.
//!
//! The tree is built with aliases expanded, so it is bounded: aliases may add at most [`MAX_ALIAS_NODES`]
//! nodes (ten levels of ten aliases, the "billion laughs" file, would otherwise take all memory), and nesting
//! stops at [`MAX_DEPTH`] levels (the tree is walked recursively).

use crate::config::error::Position;
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NodeKind {
    Scalar { value: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub pos: Position,
    pub kind: NodeKind,
}

impl Node {
    /// A plain `~`/`null`/empty scalar, which YAML (and Go's decoders) treat as null.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// A YAML syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Position,
    pub message: String,
}

fn position(span: &Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

/// Most nodes the expansion of aliases may add to a document's tree.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// Deepest nesting of sequences and mappings accepted (serde_yaml_ng's own limit is the same).
pub const MAX_DEPTH: usize = 128;

enum Frame {
    Seq {
        pos: Position,
        anchor: usize,
        items: Vec<Node>,
        /// Nodes in the subtree so far (itself included).
        size: usize,
    },
    Map {
        pos: Position,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        size: usize,
    },
}

impl Frame {
    fn size_mut(&mut self) -> &mut usize {
        match self {
            Frame::Seq { size, .. } | Frame::Map { size, .. } => size,
        }
    }
}

/// Parses the first document of `text`. `Ok(None)` when the stream holds no document.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut tree = TreeBuilder::default();
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| SyntaxError {
            pos: Position {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        tree.take(event, position(&span))?;
    }
    Ok(tree.root)
}

/// Builds the tree of the first document from the parser's events: the open sequences and mappings as a stack,
/// and every anchored node with its size, so that aliases expand within [`MAX_ALIAS_NODES`].
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    /// Anchored node and the number of nodes in it.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    documents: usize,
    alias_nodes: usize,
}

impl TreeBuilder {
    fn take(&mut self, event: Event, pos: Position) -> Result<(), SyntaxError> {
        let complete = match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                None
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        value: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                Some(self.anchored(anchor, node, 1))
            }
            Event::Alias(id) => Some(self.alias(id, pos)?),
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                return Err(SyntaxError {
                    pos,
                    message: format!(
                        "sequences and mappings nest deeper than {MAX_DEPTH} levels here"
                    ),
                });
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                    size: 1,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    size: 1,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        if let Some((node, size)) = complete {
            self.attach(node, size);
        }
        Ok(())
    }

    /// `node` (of `size` nodes), remembered under `anchor` when it has one.
    fn anchored(&mut self, anchor: usize, node: Node, size: usize) -> (Node, usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        (node, size)
    }

    /// The anchored node an alias names (an unknown one reads as null), counted against [`MAX_ALIAS_NODES`].
    fn alias(&mut self, id: usize, pos: Position) -> Result<(Node, usize), SyntaxError> {
        let Some((node, size)) = self.anchors.get(&id) else {
            let null = NodeKind::Scalar {
                value: String::new(),
                plain: true,
            };
            return Ok((Node { pos, kind: null }, 1));
        };
        self.alias_nodes += size;
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "aliases here expand to more than {MAX_ALIAS_NODES} values (a YAML alias bomb?); write the \
                     values out instead"
                ),
            });
        }
        Ok((node.clone(), *size))
    }

    /// Closes the innermost sequence or mapping: it becomes a node of its parent.
    fn close(&mut self) -> Option<(Node, usize)> {
        let (pos, anchor, kind, size) = match self.stack.pop()? {
            Frame::Seq {
                pos,
                anchor,
                items,
                size,
            } => (pos, anchor, NodeKind::Seq(items), size),
            Frame::Map {
                pos,
                anchor,
                entries,
                size,
                ..
            } => (pos, anchor, NodeKind::Map(entries), size),
        };
        Some(self.anchored(anchor, Node { pos, kind }, size))
    }

    /// Puts a complete node into the open sequence or mapping (as a key, then as its value), or makes it the
    /// first document's root.
    fn attach(&mut self, node: Node, size: usize) {
        if let Some(parent) = self.stack.last_mut() {
            *parent.size_mut() += size;
        }
        match self.stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None if self.documents == 1 => self.root = Some(node),
            None => {}
        }
    }
}

/// Field path → position of the value, for every node in a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMap {
    /// The file name shown in messages.
    pub origin: String,
    positions: HashMap<String, Position>,
    key_positions: HashMap<String, Position>,
}

impl SourceMap {
    pub(crate) fn new(origin: &str, root: Option<&Node>) -> Self {
        let mut map = SourceMap {
            origin: origin.to_string(),
            ..Default::default()
        };
        if let Some(root) = root {
            map.index(String::new(), root);
        }
        map
    }

    fn index(&mut self, path: String, node: &Node) {
        match &node.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.index(format!("{path}[{i}]"), item);
                }
            }
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    if let Some(key) = k.scalar() {
                        let child = join(&path, key);
                        // The first occurrence wins, as it does for the decoders.
                        self.key_positions.entry(child.clone()).or_insert(k.pos);
                        // A null value (`name:`) has no useful position of its own: point at the key.
                        let at = if v.is_null() && v.scalar() == Some("") {
                            k.pos
                        } else {
                            v.pos
                        };
                        self.positions.entry(child.clone()).or_insert(at);
                        self.index(child, v);
                    }
                }
            }
        }
        self.positions.entry(path).or_insert(node.pos);
    }

    /// Position of `path`, or of its nearest ancestor present in the file.
    pub fn position(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// Position of the key that introduces `path` (falls back like [`SourceMap::position`]).
    pub fn key_position(&self, path: &str) -> Option<Position> {
        self.key_positions
            .get(path)
            .copied()
            .or_else(|| self.position(path))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.positions.contains_key(path)
    }
}

/// `a` + `.b` (or just `b` at the root).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → ``.
pub(crate) fn parent(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return &path[..i];
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a: 1\nlist:\n  - x: y\n    z:\n  - 7\nflow: {k: [1, 2]}\n";

    #[test]
    fn positions_of_values_and_fallback_to_ancestors() {
        let root = parse(TEXT).unwrap();
        let map = SourceMap::new("f.yml", root.as_ref());
        assert_eq!(map.position("a"), Some(Position { line: 1, column: 4 }));
        assert_eq!(
            map.position("list[0].x"),
            Some(Position { line: 3, column: 8 })
        );
        // `z:` has an empty value: point at the key.
        assert_eq!(
            map.position("list[0].z"),
            Some(Position { line: 4, column: 5 })
        );
        assert_eq!(
            map.position("list[1]"),
            Some(Position { line: 5, column: 5 })
        );
        assert_eq!(
            map.position("flow.k[1]"),
            Some(Position {
                line: 6,
                column: 15
            })
        );
        // Missing fields fall back to the nearest ancestor.
        assert_eq!(
            map.position("list[0].missing.deeper"),
            Some(Position { line: 3, column: 5 })
        );
        assert_eq!(
            map.key_position("list"),
            Some(Position { line: 2, column: 1 })
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: b\n c: d\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2].c"), "a.b[2]");
        assert_eq!(parent("a.b[2]"), "a.b");
        assert_eq!(parent("a"), "");
    }

    #[test]
    fn empty_stream_has_no_root() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn alias_expansion_is_bounded_in_nodes_and_nesting_in_depth() {
        let with_aliases = |n: usize| {
            let items = vec!["x"; 999].join(", ");
            let aliases = vec!["*a"; n].join(", ");
            format!("a: &a [{items}]\nb: [{aliases}]\n")
        };
        // The anchored sequence is 1000 nodes: 100 copies are exactly the budget, one more is refused.
        assert!(parse(&with_aliases(100)).is_ok());
        let e = parse(&with_aliases(101)).unwrap_err();
        assert!(e.message.contains("alias bomb"), "{}", e.message);
        assert_eq!(e.pos.line, 2);
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&nest(MAX_DEPTH)).is_ok());
        let e = parse(&nest(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.message.contains("deeper than 128"), "{}", e.message);
    }
}
