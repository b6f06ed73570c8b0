//! The pickle of a `torch.save` zip archive (`data.pkl`), read from memory into the tensors it
//! describes: their names, storages, offsets, shapes and strides. No pickle code runs: the
//! opcodes are interpreted as data, callables are never called, and only the few that
//! `torch.save` writes for a state dict mean anything (`OrderedDict`, `_rebuild_tensor_v2`,
//! `_rebuild_parameter`); any other object becomes an opaque value that holds no tensors.
//!
//! Why by hand: pytorch-reader 0.22.1 (which the desktop loader uses) reads storages only
//! from a file path, and a browser page has only bytes; serde-pickle has no persistent ids,
//! which is how a checkpoint names its storages.
//!
//! Hostile pickles are bounded: every value carries its node count and nesting depth, and a
//! pickle that would copy more than [`MAX_NODES`] nodes in all (memo "billion laughs") or
//! nest deeper than [`MAX_DEPTH`] is refused before it allocates or recurses further.

use crate::dtype::SourceDType;
use std::collections::HashMap;

/// Most value nodes one pickle may create or copy in all (and hold on its stack): a 13B
/// checkpoint's state dict is about 2,000 tensors of a dozen nodes each.
const MAX_NODES: usize = 1_000_000;
/// Deepest nesting of containers; a state dict nests two or three deep.
const MAX_DEPTH: usize = 64;

/// A storage a tensor views: one entry `data/<key>` of the archive.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StorageRef {
    /// The entry's name under `data/`.
    pub key: String,
    /// The element type, or the storage class's name where we have no such type.
    pub dtype: Result<SourceDType, String>,
    /// Elements the storage holds, as the pickle says.
    pub numel: usize,
}

/// A tensor found in the pickle: a view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TensorRef {
    /// Its name: the keys (and list indices) leading to it, joined by dots.
    pub name: String,
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    /// A `module.name` reference (`GLOBAL`, `STACK_GLOBAL`).
    Global(String),
    Storage(StorageRef),
    Tensor(Box<TensorRef>),
    /// A tuple or list.
    Seq(Container<Value>),
    Dict(Container<(Value, Value)>),
    /// Anything built by a callable we do not interpret; it holds no tensors.
    Opaque,
}

/// A container's items, with the size and depth of what it holds, kept as items are added
/// so that copying or nesting it can be refused in constant time.
#[derive(Clone, Debug)]
struct Container<T> {
    items: Vec<T>,
    nodes: usize,
    depth: usize,
}

impl<T> Default for Container<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            nodes: 1,
            depth: 0,
        }
    }
}

impl Value {
    fn nodes(&self) -> usize {
        match self {
            Value::Seq(c) => c.nodes,
            Value::Dict(c) => c.nodes,
            _ => 1,
        }
    }

    fn depth(&self) -> usize {
        match self {
            Value::Seq(c) => c.depth,
            Value::Dict(c) => c.depth,
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Global(_) => "a class",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Seq(_) => "a tuple or list",
            Value::Dict(_) => "a dict",
            Value::Opaque => "an object",
        }
    }
}

/// Why a pickle was refused.
pub(super) type Error = String;

fn seq(items: Vec<Value>) -> Result<Value, Error> {
    let mut c = Container::default();
    for item in items {
        push_item(&mut c, item)?;
    }
    Ok(Value::Seq(c))
}

fn push_item(c: &mut Container<Value>, item: Value) -> Result<(), Error> {
    grow(&mut c.nodes, &mut c.depth, item.nodes(), item.depth())?;
    c.items.push(item);
    Ok(())
}

fn set_item(c: &mut Container<(Value, Value)>, key: Value, value: Value) -> Result<(), Error> {
    grow(&mut c.nodes, &mut c.depth, key.nodes(), key.depth())?;
    grow(&mut c.nodes, &mut c.depth, value.nodes(), value.depth())?;
    c.items.push((key, value));
    Ok(())
}

fn grow(nodes: &mut usize, depth: &mut usize, add: usize, child: usize) -> Result<(), Error> {
    *nodes = nodes.saturating_add(add);
    *depth = (*depth).max(child + 1);
    if *nodes > MAX_NODES {
        return Err(format!("the pickle builds more than {MAX_NODES} values"));
    }
    if *depth > MAX_DEPTH {
        return Err(format!(
            "the pickle nests more than {MAX_DEPTH} containers deep"
        ));
    }
    Ok(())
}

/// The tensors `pickle` describes, named by the keys that lead to them.
pub(super) fn tensors(pickle: &[u8]) -> Result<Vec<TensorRef>, Error> {
    let root = Machine::default().run(pickle)?;
    if !matches!(root, Value::Dict(_)) {
        return Err(format!(
            "the pickle holds {}, not a dict of tensors",
            root.kind()
        ));
    }
    let mut found = Vec::new();
    collect(root, &mut Vec::new(), &mut found);
    Ok(found)
}

/// Walks `value` depth-first, naming tensors as pytorch-reader does (dict keys and list
/// indices joined by dots), so both readers give a checkpoint the same names.
fn collect(value: Value, path: &mut Vec<String>, found: &mut Vec<TensorRef>) {
    match value {
        Value::Dict(c) => {
            for (key, value) in c.items {
                let key = match key {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                path.push(key);
                collect(value, path, found);
                path.pop();
            }
        }
        Value::Seq(c) => {
            for (index, item) in c.items.into_iter().enumerate() {
                path.push(index.to_string());
                collect(item, path, found);
                path.pop();
            }
        }
        Value::Tensor(mut tensor) => {
            tensor.name = path.join(".");
            found.push(*tensor);
        }
        _ => {}
    }
}

/// The pickle virtual machine's stack, mark stack and memo.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Nodes copied so far (memo puts and gets), against [`MAX_NODES`].
    copied: usize,
}

/// A cursor over the pickle's bytes.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| {
            format!(
                "the pickle ends inside an opcode's argument (needs {n} bytes at offset {})",
                self.at
            )
        })?;
        let slice = &self.data[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A length from the pickle, which must fit in what is left of it.
    fn len(&mut self, n: u64) -> Result<usize, Error> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.at)
            .ok_or_else(|| format!("a length of {n} bytes runs past the pickle's end"))
    }

    fn line(&mut self) -> Result<&'a str, Error> {
        let rest = &self.data[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends inside a GLOBAL's name")?;
        self.at += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "a GLOBAL's name is not UTF-8".into())
    }

    fn utf8(&mut self, n: usize) -> Result<String, Error> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
}

impl Machine {
    fn pop(&mut self) -> Result<Value, Error> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops an empty stack".into())
    }

    fn top(&mut self) -> Result<&mut Value, Error> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle reads an empty stack".into())
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, Error> {
        let mark = self.marks.pop().ok_or("the pickle has no MARK to pop to")?;
        if mark > self.stack.len() {
            return Err("the pickle's MARK lies above its stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn put(&mut self, key: u32) -> Result<(), Error> {
        let nodes = self
            .stack
            .last()
            .ok_or("the pickle memoizes an empty stack")?
            .nodes();
        self.charge(nodes)?;
        let value = self.stack.last().expect("checked above").clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<(), Error> {
        let value = self
            .memo
            .get(&key)
            .ok_or_else(|| format!("the pickle reads memo entry {key}, never written"))?;
        let (value, nodes) = (value.clone(), value.nodes());
        self.charge(nodes)?;
        self.stack.push(value);
        Ok(())
    }

    fn charge(&mut self, nodes: usize) -> Result<(), Error> {
        self.copied = self.copied.saturating_add(nodes);
        if self.copied > MAX_NODES {
            return Err(format!("the pickle copies more than {MAX_NODES} values"));
        }
        Ok(())
    }

    fn run(mut self, data: &[u8]) -> Result<Value, Error> {
        let mut b = Bytes { data, at: 0 };
        loop {
            if self.stack.len() > MAX_NODES {
                return Err(format!("the pickle holds more than {MAX_NODES} values"));
            }
            let at = b.at;
            let op = b
                .u8()
                .map_err(|_| "the pickle ends without STOP".to_string())?;
            match op {
                0x80 => {
                    let proto = b.u8()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} is unknown"));
                    }
                }
                0x95 => {
                    b.u64()?; // FRAME: a length hint.
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool),
                b'K' => self.stack.push(Value::Int(b.u8()?.into())),
                b'M' => self.stack.push(Value::Int(b.u16()?.into())),
                b'J' => self.stack.push(Value::Int(b.u32()? as i32 as i64)),
                0x8a => {
                    let n = b.u8()? as usize;
                    let bytes = b.take(n)?;
                    if n > 8 {
                        return Err(format!("an integer of {n} bytes is out of range"));
                    }
                    let mut full = [if bytes.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    }; 8];
                    full[..n].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(full)));
                }
                b'G' => {
                    b.u64()?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let n = b.u32()?;
                    let n = b.len(n.into())?;
                    self.stack.push(Value::Str(b.utf8(n)?));
                }
                0x8c => {
                    let n = b.u8()?.into();
                    self.stack.push(Value::Str(b.utf8(n)?));
                }
                0x8d => {
                    let n = b.u64()?;
                    let n = b.len(n)?;
                    self.stack.push(Value::Str(b.utf8(n)?));
                }
                // Byte strings (BINSTRING, SHORT_BINSTRING, BINBYTES, SHORT_BINBYTES,
                // BINBYTES8): a checkpoint's keys are text; kept as text where they are UTF-8.
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'T' | b'B' => b.u32()?.into(),
                        b'U' | b'C' => b.u8()?.into(),
                        _ => b.u64()?,
                    };
                    let n = b.len(n)?;
                    let bytes = b.take(n)?;
                    self.stack.push(match std::str::from_utf8(bytes) {
                        Ok(s) => Value::Str(s.to_string()),
                        Err(_) => Value::Opaque,
                    });
                }
                b')' => self.stack.push(Value::Seq(Container::default())),
                b']' => self.stack.push(Value::Seq(Container::default())),
                b'}' => self.stack.push(Value::Dict(Container::default())),
                b't' | b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(seq(items)?);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("the pickle makes a tuple of more values than it has".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(seq(items)?);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut dict = Value::Dict(Container::default());
                    set_items(&mut dict, items)?;
                    self.stack.push(dict);
                }
                b'a' => {
                    let item = self.pop()?;
                    match self.top()? {
                        Value::Seq(c) => push_item(c, item)?,
                        other => return Err(format!("APPEND to {}", other.kind())),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Seq(c) => {
                            for item in items {
                                push_item(c, item)?;
                            }
                        }
                        other => return Err(format!("APPENDS to {}", other.kind())),
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    set_items(self.top()?, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    set_items(self.top()?, items)?;
                }
                b'q' => {
                    let key = b.u8()?.into();
                    self.put(key)?;
                }
                b'r' => {
                    let key = b.u32()?;
                    self.put(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                    self.put(key)?;
                }
                b'h' => {
                    let key = b.u8()?.into();
                    self.get(key)?;
                }
                b'j' => {
                    let key = b.u32()?;
                    self.get(key)?;
                }
                b'c' => {
                    let module = b.line()?;
                    let name = b.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.stack.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => return Err("STACK_GLOBAL of values that are not strings".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Storage(storage(pid)?));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(reduce(callable, args)?);
                }
                // NEWOBJ / NEWOBJ_EX: an instance of a class; its contents are not read.
                0x81 => {
                    self.pop()?;
                    self.pop()?;
                    self.stack.push(Value::Opaque);
                }
                0x92 => {
                    self.pop()?;
                    self.pop()?;
                    self.pop()?;
                    self.stack.push(Value::Opaque);
                }
                // BUILD: an object's state (an OrderedDict's `_metadata`); not needed.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.charge(top.nodes())?;
                    self.stack.push(top);
                }
                0x31 => {
                    self.pop_mark()?;
                }
                _ => {
                    return Err(format!(
                        "opcode 0x{op:02x} at offset {at} is not one torch.save writes"
                    ));
                }
            }
        }
    }
}

/// SETITEM(S): `items` are keys and values, alternating, set on the dict `target`.
fn set_items(target: &mut Value, items: Vec<Value>) -> Result<(), Error> {
    let Value::Dict(c) = target else {
        return Err(format!("SETITEMS on {}", target.kind()));
    };
    if !items.len().is_multiple_of(2) {
        return Err("SETITEMS with a key and no value".into());
    }
    let mut items = items.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        set_item(c, key, value)?;
    }
    Ok(())
}

fn int(value: &Value, what: &str) -> Result<usize, Error> {
    match value {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative ({i})")),
        other => Err(format!("{what} is {}, not an int", other.kind())),
    }
}

fn ints(value: &Value, what: &str) -> Result<Vec<usize>, Error> {
    match value {
        Value::Seq(c) => c.items.iter().map(|v| int(v, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", other.kind())),
    }
}

/// A persistent id: `('storage', torch.<Type>Storage, key, location, numel)`.
fn storage(pid: Value) -> Result<StorageRef, Error> {
    let Value::Seq(c) = pid else {
        return Err(format!("a persistent id is {}, not a tuple", pid.kind()));
    };
    let [tag, class, key, _location, numel] = c.items.as_slice() else {
        return Err(format!(
            "a persistent id has {} fields, not the 5 of a storage",
            c.items.len()
        ));
    };
    if !matches!(tag, Value::Str(s) if s == "storage") {
        return Err("a persistent id that is not a storage".into());
    }
    let Value::Global(class) = class else {
        return Err("a storage's type is not a class".into());
    };
    let Value::Str(key) = key else {
        return Err("a storage's key is not a string".into());
    };
    let dtype = match class.as_str() {
        "torch.FloatStorage" => Ok(SourceDType::F32),
        "torch.HalfStorage" => Ok(SourceDType::F16),
        "torch.BFloat16Storage" => Ok(SourceDType::BF16),
        "torch.DoubleStorage" => Ok(SourceDType::F64),
        // Named as pytorch-reader names them, so both readers report a type alike.
        "torch.LongStorage" => Err("I64".into()),
        "torch.IntStorage" => Err("I32".into()),
        "torch.ShortStorage" => Err("I16".into()),
        "torch.CharStorage" => Err("I8".into()),
        "torch.ByteStorage" => Err("U8".into()),
        "torch.BoolStorage" => Err("Bool".into()),
        other => Err(other.trim_start_matches("torch.").to_string()),
    };
    Ok(StorageRef {
        key: key.clone(),
        dtype,
        numel: int(numel, "a storage's size")?,
    })
}

/// REDUCE: what calling `callable` with `args` would build, for the callables a state dict
/// uses; anything else is opaque (and never called).
fn reduce(callable: Value, args: Value) -> Result<Value, Error> {
    let Value::Global(name) = callable else {
        return Ok(Value::Opaque);
    };
    let Value::Seq(args) = args else {
        return Err(format!(
            "{name} is called with {}, not a tuple",
            args.kind()
        ));
    };
    let args = args.items;
    Ok(match name.as_str() {
        "collections.OrderedDict" if args.is_empty() => Value::Dict(Container::default()),
        "torch._utils._rebuild_tensor_v2" => {
            let [storage, offset, shape, stride, ..] = args.as_slice() else {
                return Err("_rebuild_tensor_v2 with fewer than 4 arguments".into());
            };
            let Value::Storage(storage) = storage else {
                return Err(format!(
                    "_rebuild_tensor_v2 of {}, not a storage",
                    storage.kind()
                ));
            };
            let shape = ints(shape, "a tensor's size")?;
            let stride = ints(stride, "a tensor's stride")?;
            if shape.len() != stride.len() {
                return Err(format!(
                    "a tensor of {} dimensions with {} strides",
                    shape.len(),
                    stride.len()
                ));
            }
            Value::Tensor(Box::new(TensorRef {
                name: String::new(),
                storage: storage.clone(),
                offset: int(offset, "a tensor's storage offset")?,
                shape,
                stride,
            }))
        }
        // nn.Parameter(tensor, requires_grad, hooks[, state]): the tensor.
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.into_iter().next() {
                Some(tensor @ Value::Tensor(_)) => tensor,
                _ => return Err("a parameter that does not hold a tensor".into()),
            }
        }
        _ => Value::Opaque,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle that copies one memo entry into itself twice per level: 2^40 nodes if
    /// expanded, refused by the node budget instead.
    #[test]
    fn memo_bombs_are_refused() {
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for level in 0..40u8 {
            p.extend([b'h', level, b'h', level, 0x86, b'q', level + 1]);
        }
        p.push(b'.');
        let err = Machine::default().run(&p).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        let err = Machine::default().run(&p).unwrap_err();
        assert!(err.contains("nests"), "{err}");
    }

    #[test]
    fn truncated_and_odd_pickles_are_errors() {
        for p in [
            &b""[..],
            b"\x80\x02}q\x00(X\x05\x00\x00\x00ab",
            b"\x80\x02}(X\x01\x00\x00\x00au.",
            b"\x80\x02h\x07.",
            b"\x80\x02\x8a\x09123456789.",
            b"\x80\x02i.",
            b"\x80\x02K\x01.",
            b"\x80\x02Q.",
            b"0.",
        ] {
            assert!(tensors(p).is_err(), "{p:?}");
        }
    }

    /// What `torch.save({"w": torch.zeros(2, 3, dtype=torch.bfloat16).t()})` writes,
    /// assembled by hand: a transposed view of a 6-element storage, and an ignored config
    /// value beside it.
    #[test]
    fn reads_a_state_dict_with_a_view() {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01(");
        p.extend(b"(X\x07\x00\x00\x00storageq\x02ctorch\nBFloat16Storage\nq\x03");
        p.extend(b"X\x01\x00\x00\x000q\x04X\x03\x00\x00\x00cpuq\x05K\x06tq\x06Q");
        p.extend(b"K\x00K\x03K\x02\x86K\x01K\x03\x86\x89ccollections\nOrderedDict\n)Rq\x07tR");
        p.extend(b"X\x02\x00\x00\x00lrG?\xf0\x00\x00\x00\x00\x00\x00u.");
        let found = tensors(&p).unwrap();
        assert_eq!(
            found,
            vec![TensorRef {
                name: "w".into(),
                storage: StorageRef {
                    key: "0".into(),
                    dtype: Ok(SourceDType::BF16),
                    numel: 6
                },
                offset: 0,
                shape: vec![3, 2],
                stride: vec![1, 3],
            }]
        );
    }
}
