//! MBFile: the NSKeyedArchiver record in Manifest.db's `file` column, decoded and encoded.
//! Decoding is bounded and strict about types; encoding reproduces the layout iOS writes, byte for byte.

use super::bplist::{Bplist, BplistError, BplistWriter, Object, Refs};

/// Largest `file` blob accepted. Real ones are 0.4–2 KiB; iphone-backup-decrypt refuses a
/// database whose largest blob exceeds 100 KiB. The cap bounds memory per row.
pub const MAX_MBFILE_LEN: usize = 1024 * 1024;

/// `$version` written by NSKeyedArchiver.
const ARCHIVE_VERSION: i128 = 100_000;

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100000;
/// Directory type bits.
pub const S_IFDIR: u32 = 0o040000;
/// Symbolic link type bits.
pub const S_IFLNK: u32 = 0o120000;

/// What a backup entry is, from its `Mode` type bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    /// Any other type bits (devices, sockets, or no type at all).
    Other,
}

/// One decoded MBFile record: the metadata of a file, directory or symlink in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MbFile {
    /// Path inside the domain, the same as the row's `relativePath` column.
    pub relative_path: String,
    /// Symlink target (absolute on-device path); symlinks only.
    pub target: Option<String>,
    /// Plaintext length in bytes; 0 for directories and symlinks.
    pub size: u64,
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    /// On-device inode number.
    pub inode: u64,
    /// Owner; signed because iOS stores `nobody` as -2.
    pub user_id: i64,
    /// Group; signed because iOS stores `nogroup` as -2.
    pub group_id: i64,
    /// Unix epoch seconds.
    pub birth: i64,
    /// Unix epoch seconds.
    pub last_modified: i64,
    /// Unix epoch seconds.
    pub last_status_change: i64,
    /// Data protection class (1–4 for files, 0 for symlinks and most directories).
    pub protection_class: u32,
    /// BSD `st_flags`-like value (0, sometimes 128).
    pub flags: u64,
    /// Raw `EncryptionKey` bytes: 4-byte little-endian class + 40-byte RFC 3394 wrapped key.
    /// Kept raw; the crypto code parses and unwraps it.
    pub encryption_key: Option<Vec<u8>>,
    /// Raw 20-byte `Digest` (present on some files; no reader uses it).
    pub digest: Option<Vec<u8>>,
    /// Raw `ExtendedAttributes`: a binary plist dictionary of name → data
    /// (see [`decode_extended_attributes`]).
    pub extended_attributes: Option<Vec<u8>>,
}

/// Why a `file` blob is not an acceptable MBFile archive. All of these are faults of the data
/// (the phone or the drive), never of the local machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MbFileError {
    /// The blob exceeds [`MAX_MBFILE_LEN`].
    #[error("MBFile blob of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: usize, max: usize },
    /// The blob is not a well-formed binary plist.
    #[error("MBFile blob is not a valid binary plist: {0}")]
    Plist(#[from] BplistError),
    /// The plist is not an NSKeyedArchiver archive (missing or wrong `$archiver`, `$top`, `$objects`).
    #[error("MBFile blob is not a keyed archive: {0}")]
    NotAnArchive(&'static str),
    /// A key that every MBFile carries is absent.
    #[error("MBFile lacks the {0} key")]
    MissingKey(&'static str),
    /// A key appears twice in one dictionary.
    #[error("MBFile has the {0} key twice")]
    DuplicateKey(&'static str),
    /// A key holds a value of the wrong type.
    #[error("MBFile key {key} should be {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// An integer does not fit the field (for example a negative `Size`).
    #[error("MBFile key {key} has out-of-range value {value}")]
    OutOfRange { key: &'static str, value: i128 },
    /// A UID points past the end of `$objects`.
    #[error("UID {uid} points past the {count} archived objects")]
    UidOutOfRange { uid: u64, count: usize },
    /// A UID resolves to another UID: a chain or a loop, which NSKeyedArchiver never writes.
    #[error("UID {uid} resolves to another UID (a chain or a loop)")]
    UidChain { uid: u64 },
    /// The root object's class is not MBFile.
    #[error("archived root object has class {0:?}, not MBFile")]
    WrongClass(String),
}

/// Keys of the root MBFile dictionary, as named in the archive.
mod key {
    pub const CLASS: &str = "$class";
    pub const RELATIVE_PATH: &str = "RelativePath";
    pub const TARGET: &str = "Target";
    pub const SIZE: &str = "Size";
    pub const MODE: &str = "Mode";
    pub const INODE: &str = "InodeNumber";
    pub const USER_ID: &str = "UserID";
    pub const GROUP_ID: &str = "GroupID";
    pub const BIRTH: &str = "Birth";
    pub const LAST_MODIFIED: &str = "LastModified";
    pub const LAST_STATUS_CHANGE: &str = "LastStatusChange";
    pub const PROTECTION_CLASS: &str = "ProtectionClass";
    pub const FLAGS: &str = "Flags";
    pub const ENCRYPTION_KEY: &str = "EncryptionKey";
    pub const DIGEST: &str = "Digest";
    pub const EXTENDED_ATTRIBUTES: &str = "ExtendedAttributes";
}

/// Every root key this code knows, in a fixed order used to index `Fields`.
const ROOT_KEYS: [&str; 16] = [
    key::CLASS,
    key::RELATIVE_PATH,
    key::TARGET,
    key::SIZE,
    key::MODE,
    key::INODE,
    key::USER_ID,
    key::GROUP_ID,
    key::BIRTH,
    key::LAST_MODIFIED,
    key::LAST_STATUS_CHANGE,
    key::PROTECTION_CLASS,
    key::FLAGS,
    key::ENCRYPTION_KEY,
    key::DIGEST,
    key::EXTENDED_ATTRIBUTES,
];

impl MbFile {
    /// What the entry is, from the type bits of `mode`.
    pub fn kind(&self) -> FileKind {
        match self.mode & S_IFMT {
            S_IFREG => FileKind::File,
            S_IFDIR => FileKind::Directory,
            S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }

    /// True for a regular file (the only kind with a data file in the backup).
    pub fn is_regular_file(&self) -> bool {
        self.kind() == FileKind::File
    }

    /// True for a directory.
    pub fn is_directory(&self) -> bool {
        self.kind() == FileKind::Directory
    }

    /// True for a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind() == FileKind::Symlink
    }

    /// The protection class in the little-endian prefix of `encryption_key`, if there is one.
    /// Apple keeps it equal to `protection_class`.
    pub fn encryption_key_class(&self) -> Option<u32> {
        let key = self.encryption_key.as_deref()?;
        let prefix: [u8; 4] = key.get(..4)?.try_into().ok()?;
        Some(u32::from_le_bytes(prefix))
    }

    /// Parses an MBFile archive. Never panics; every malformation is a typed error.
    pub fn decode(blob: &[u8]) -> Result<MbFile, MbFileError> {
        if blob.len() > MAX_MBFILE_LEN {
            return Err(MbFileError::TooLarge {
                len: blob.len(),
                max: MAX_MBFILE_LEN,
            });
        }
        let plist = Bplist::parse(blob)?;
        let archive = Archive::open(&plist)?;
        let root = archive.root()?;
        let fields = Fields::collect(&plist, root)?;

        // The class must be MBFile: anything else is some other archived object.
        let class = archive.resolve_required(fields.uid(key::CLASS)?, key::CLASS)?;
        let class_name = archive.class_name(class)?;
        if class_name != "MBFile" {
            return Err(MbFileError::WrongClass(class_name));
        }

        let relative_path = archive
            .resolve(fields.uid(key::RELATIVE_PATH)?)?
            .ok_or(MbFileError::MissingKey(key::RELATIVE_PATH))?;
        let relative_path = expect_string(&plist, relative_path, key::RELATIVE_PATH)?;
        let target = match fields.optional_uid(key::TARGET)? {
            Some(uid) => match archive.resolve(uid)? {
                Some(i) => Some(expect_string(&plist, i, key::TARGET)?),
                None => None,
            },
            None => None,
        };
        let digest = archive.optional_data(&fields, key::DIGEST)?;
        let extended_attributes = archive.optional_data(&fields, key::EXTENDED_ATTRIBUTES)?;
        let encryption_key = match fields.optional_uid(key::ENCRYPTION_KEY)? {
            Some(uid) => match archive.resolve(uid)? {
                Some(i) => Some(archive.ns_data(i)?),
                None => None,
            },
            None => None,
        };

        Ok(MbFile {
            relative_path,
            target,
            size: fields.int(key::SIZE)?,
            mode: fields.int(key::MODE)?,
            inode: fields.int(key::INODE)?,
            user_id: fields.int(key::USER_ID)?,
            group_id: fields.int(key::GROUP_ID)?,
            birth: fields.int(key::BIRTH)?,
            last_modified: fields.int(key::LAST_MODIFIED)?,
            last_status_change: fields.int(key::LAST_STATUS_CHANGE)?,
            protection_class: fields.int(key::PROTECTION_CLASS)?,
            flags: fields.int(key::FLAGS)?,
            encryption_key,
            digest,
            extended_attributes,
        })
    }

    /// The archive as a binary plist, laid out as iOS lays it out.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the archive to `out`. See [`MbFile::encode`].
    ///
    /// `$objects`: 0 `$null`, 1 the root dictionary, 2 the relative path, then the optional
    /// target, digest, encryption key (an NSMutableData dictionary and its class), extended
    /// attributes, and last the MBFile class. The binary plist is flattened in pre-order with
    /// equal strings and integers shared, except that `Size` never shares an integer with the
    /// other fields and the NSMutableData class list has its own copy of the class name — both
    /// as iOS writes them. Root keys follow the order iOS's hash table gives them.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // $objects indices (archive UIDs).
        let mut next = 3u64;
        let mut take = || {
            let uid = next;
            next += 1;
            uid
        };
        let target_uid = self.target.as_ref().map(|_| take());
        let digest_uid = self.digest.as_ref().map(|_| take());
        let key_uids = self.encryption_key.as_ref().map(|_| (take(), take()));
        let xattr_uid = self.extended_attributes.as_ref().map(|_| take());
        let class_uid = take();

        let mut w = BplistWriter::new();
        let top = w.reserve();
        let top_keys = ["$version", "$archiver", "$top", "$objects"].map(|k| w.string(k));
        let version = w.int(INT_CLASS, ARCHIVE_VERSION);
        let archiver = w.string("NSKeyedArchiver");
        let top_dict = w.reserve();
        let root_key = w.string("root");
        let root_uid = w.uid(1);
        w.set_dict(top_dict, vec![root_key], vec![root_uid]);
        let objects = w.reserve();
        let null = w.string("$null");

        let root = w.reserve();
        let order = root_key_order(
            self.target.is_some(),
            self.digest.is_some(),
            self.encryption_key.is_some(),
            self.extended_attributes.is_some(),
        );
        let root_keys: Vec<usize> = order.iter().map(|k| w.string(k)).collect();
        let root_values: Vec<usize> = order
            .iter()
            .map(|&k| match k {
                key::CLASS => w.uid(class_uid),
                key::RELATIVE_PATH => w.uid(2),
                key::TARGET => w.uid(target_uid.unwrap_or(0)),
                key::DIGEST => w.uid(digest_uid.unwrap_or(0)),
                key::ENCRYPTION_KEY => w.uid(key_uids.map_or(0, |(k, _)| k)),
                key::EXTENDED_ATTRIBUTES => w.uid(xattr_uid.unwrap_or(0)),
                key::SIZE => w.int(SIZE_CLASS, i128::from(self.size)),
                key::MODE => w.int(INT_CLASS, i128::from(self.mode)),
                key::INODE => w.int(INT_CLASS, i128::from(self.inode)),
                key::USER_ID => w.int(INT_CLASS, i128::from(self.user_id)),
                key::GROUP_ID => w.int(INT_CLASS, i128::from(self.group_id)),
                key::BIRTH => w.int(INT_CLASS, i128::from(self.birth)),
                key::LAST_MODIFIED => w.int(INT_CLASS, i128::from(self.last_modified)),
                key::LAST_STATUS_CHANGE => w.int(INT_CLASS, i128::from(self.last_status_change)),
                key::PROTECTION_CLASS => w.int(INT_CLASS, i128::from(self.protection_class)),
                _ => w.int(INT_CLASS, i128::from(self.flags)),
            })
            .collect();
        w.set_dict(root, root_keys, root_values);

        let mut items = vec![null, root, w.string(&self.relative_path)];
        if let Some(target) = &self.target {
            items.push(w.string(target));
        }
        if let Some(digest) = &self.digest {
            items.push(w.data(digest));
        }
        if let (Some(key_bytes), Some((_, data_class_uid))) = (&self.encryption_key, key_uids) {
            let key_dict = w.reserve();
            let k = [w.string("NS.data"), w.string(key::CLASS)];
            let v = [w.data(key_bytes), w.uid(data_class_uid)];
            w.set_dict(key_dict, k.to_vec(), v.to_vec());
            items.push(key_dict);
            items.push(class_dict(
                &mut w,
                "NSMutableData",
                &["NSData", "NSObject"],
                true,
            ));
        }
        if let Some(xattrs) = &self.extended_attributes {
            items.push(w.data(xattrs));
        }
        items.push(class_dict(&mut w, "MBFile", &["NSObject"], false));
        w.set_array(objects, items);

        w.set_dict(
            top,
            top_keys.to_vec(),
            vec![version, archiver, top_dict, objects],
        );
        out.extend_from_slice(&w.finish(top));
    }
}

/// Integer sharing classes: iOS keeps `Size` apart from the other integer fields.
const INT_CLASS: u8 = 0;
const SIZE_CLASS: u8 = 1;

/// Writes `{$classname: name, $classes: [name, supers...]}`. `own_copy` gives the class list a
/// separate copy of the name, as iOS does for NSMutableData.
fn class_dict(w: &mut BplistWriter, name: &str, supers: &[&str], own_copy: bool) -> usize {
    let dict = w.reserve();
    let keys = vec![w.string("$classname"), w.string("$classes")];
    let name_ref = w.string(name);
    let list = w.reserve();
    let mut classes = vec![if own_copy {
        w.fresh_string(name)
    } else {
        w.string(name)
    }];
    classes.extend(supers.iter().map(|s| w.string(s)));
    w.set_array(list, classes);
    w.set_dict(dict, keys, vec![name_ref, list]);
    dict
}

/// The order of the root dictionary's keys for a given set of optional keys. The seven sets
/// seen in real iOS 14 archives have the exact order observed there (CoreFoundation hash-table
/// order); any other set falls back to a merged order.
#[rustfmt::skip]
fn root_key_order(target: bool, digest: bool, key: bool, xattrs: bool) -> Vec<&'static str> {
    use key::*;
    let exact: Option<&[&str]> = match (target, digest, key, xattrs) {
        (false, false, false, false) => Some(&[
            LAST_MODIFIED, FLAGS, GROUP_ID, CLASS, LAST_STATUS_CHANGE, RELATIVE_PATH, BIRTH,
            SIZE, INODE, MODE, USER_ID, PROTECTION_CLASS,
        ]),
        (true, false, false, false) => Some(&[
            LAST_MODIFIED, FLAGS, GROUP_ID, TARGET, CLASS, LAST_STATUS_CHANGE, RELATIVE_PATH,
            BIRTH, SIZE, INODE, MODE, USER_ID, PROTECTION_CLASS,
        ]),
        (false, false, false, true) => Some(&[
            LAST_MODIFIED, FLAGS, EXTENDED_ATTRIBUTES, GROUP_ID, CLASS, LAST_STATUS_CHANGE,
            RELATIVE_PATH, BIRTH, SIZE, INODE, MODE, USER_ID, PROTECTION_CLASS,
        ]),
        (false, false, true, false) => Some(&[
            LAST_MODIFIED, FLAGS, GROUP_ID, CLASS, LAST_STATUS_CHANGE, RELATIVE_PATH, BIRTH,
            ENCRYPTION_KEY, SIZE, MODE, USER_ID, INODE, PROTECTION_CLASS,
        ]),
        (false, false, true, true) => Some(&[
            LAST_MODIFIED, FLAGS, EXTENDED_ATTRIBUTES, GROUP_ID, CLASS, LAST_STATUS_CHANGE,
            RELATIVE_PATH, BIRTH, ENCRYPTION_KEY, SIZE, MODE, USER_ID, INODE, PROTECTION_CLASS,
        ]),
        (false, true, true, false) => Some(&[
            LAST_MODIFIED, PROTECTION_CLASS, FLAGS, GROUP_ID, CLASS, LAST_STATUS_CHANGE,
            RELATIVE_PATH, BIRTH, ENCRYPTION_KEY, SIZE, MODE, USER_ID, DIGEST, INODE,
        ]),
        (false, true, true, true) => Some(&[
            LAST_MODIFIED, PROTECTION_CLASS, FLAGS, GROUP_ID, EXTENDED_ATTRIBUTES, CLASS,
            LAST_STATUS_CHANGE, RELATIVE_PATH, BIRTH, ENCRYPTION_KEY, SIZE, MODE, USER_ID,
            DIGEST, INODE,
        ]),
        _ => None,
    };
    if let Some(order) = exact {
        return order.to_vec();
    }
    let merged = [
        LAST_MODIFIED, PROTECTION_CLASS, FLAGS, GROUP_ID, TARGET, EXTENDED_ATTRIBUTES, CLASS,
        LAST_STATUS_CHANGE, RELATIVE_PATH, BIRTH, ENCRYPTION_KEY, SIZE, MODE, USER_ID, DIGEST,
        INODE,
    ];
    merged
        .into_iter()
        .filter(|&k| match k {
            TARGET => target,
            DIGEST => digest,
            ENCRYPTION_KEY => key,
            EXTENDED_ATTRIBUTES => xattrs,
            _ => true,
        })
        .collect()
}

/// The `$objects` array of a keyed archive, with UID resolution.
struct Archive<'p, 'a> {
    plist: &'p Bplist<'a>,
    objects: Refs<'a>,
    root_uid: u64,
}

impl<'p, 'a> Archive<'p, 'a> {
    fn open(plist: &'p Bplist<'a>) -> Result<Self, MbFileError> {
        let (keys, values) = match plist.object(plist.top())? {
            Object::Dict { keys, values } => (keys, values),
            _ => return Err(MbFileError::NotAnArchive("top level is not a dictionary")),
        };
        let mut archiver = None;
        let mut top = None;
        let mut objects = None;
        for i in 0..keys.len() {
            let slot = match plist.object(keys.get(i)?)? {
                Object::String(k) if k == "$archiver" => &mut archiver,
                Object::String(k) if k == "$top" => &mut top,
                Object::String(k) if k == "$objects" => &mut objects,
                _ => continue,
            };
            if slot.replace(values.get(i)?).is_some() {
                return Err(MbFileError::NotAnArchive("a top-level key appears twice"));
            }
        }
        match archiver.map(|i| plist.object(i)).transpose()? {
            Some(Object::String(s)) if s == "NSKeyedArchiver" => {}
            _ => {
                return Err(MbFileError::NotAnArchive(
                    "$archiver is not NSKeyedArchiver",
                ))
            }
        }
        let objects = match objects.map(|i| plist.object(i)).transpose()? {
            Some(Object::Array(refs)) => refs,
            _ => return Err(MbFileError::NotAnArchive("$objects is not an array")),
        };
        let top = match top.map(|i| plist.object(i)).transpose()? {
            Some(Object::Dict { keys, values }) => (keys, values),
            _ => return Err(MbFileError::NotAnArchive("$top is not a dictionary")),
        };
        let mut root_uid = None;
        for i in 0..top.0.len() {
            if matches!(plist.object(top.0.get(i)?)?, Object::String(k) if k == "root") {
                match plist.object(top.1.get(i)?)? {
                    Object::Uid(uid) => root_uid = Some(uid),
                    _ => return Err(MbFileError::NotAnArchive("$top.root is not a UID")),
                }
            }
        }
        let root_uid = root_uid.ok_or(MbFileError::NotAnArchive("$top has no root"))?;
        Ok(Archive {
            plist,
            objects,
            root_uid,
        })
    }

    /// The plist object index a UID names; `None` for UID 0 (`$null`, i.e. nil).
    fn resolve(&self, uid: u64) -> Result<Option<usize>, MbFileError> {
        if uid == 0 {
            return Ok(None);
        }
        let count = self.objects.len();
        let position = usize::try_from(uid)
            .ok()
            .filter(|&p| p < count)
            .ok_or(MbFileError::UidOutOfRange { uid, count })?;
        let index = self.objects.get(position)?;
        if let Object::Uid(_) = self.plist.object(index)? {
            return Err(MbFileError::UidChain { uid });
        }
        Ok(Some(index))
    }

    fn resolve_required(&self, uid: u64, key: &'static str) -> Result<usize, MbFileError> {
        self.resolve(uid)?.ok_or(MbFileError::MissingKey(key))
    }

    fn root(&self) -> Result<usize, MbFileError> {
        self.resolve(self.root_uid)?
            .ok_or(MbFileError::NotAnArchive("$top.root is nil"))
    }

    /// `$classname` of a class dictionary.
    fn class_name(&self, index: usize) -> Result<String, MbFileError> {
        let (keys, values) = match self.plist.object(index)? {
            Object::Dict { keys, values } => (keys, values),
            other => {
                return Err(MbFileError::WrongType {
                    key: key::CLASS,
                    expected: "a class dictionary",
                    found: other.type_name(),
                })
            }
        };
        for i in 0..keys.len() {
            if matches!(self.plist.object(keys.get(i)?)?, Object::String(k) if k == "$classname") {
                return expect_string(self.plist, values.get(i)?, "$classname");
            }
        }
        Err(MbFileError::MissingKey("$classname"))
    }

    /// The bytes of an archived NSData/NSMutableData (`{NS.data: <bytes>, $class: …}`).
    fn ns_data(&self, index: usize) -> Result<Vec<u8>, MbFileError> {
        let wrong = |found| MbFileError::WrongType {
            key: key::ENCRYPTION_KEY,
            expected: "an NSData dictionary",
            found,
        };
        let (keys, values) = match self.plist.object(index)? {
            Object::Dict { keys, values } => (keys, values),
            other => return Err(wrong(other.type_name())),
        };
        let mut found = None;
        for i in 0..keys.len() {
            if matches!(self.plist.object(keys.get(i)?)?, Object::String(k) if k == "NS.data") {
                if found.is_some() {
                    return Err(MbFileError::DuplicateKey("NS.data"));
                }
                found = Some(values.get(i)?);
            }
        }
        match found.map(|i| self.plist.object(i)).transpose()? {
            Some(Object::Data(bytes)) => Ok(bytes.to_vec()),
            Some(other) => Err(wrong(other.type_name())),
            None => Err(MbFileError::MissingKey("NS.data")),
        }
    }

    fn optional_data(
        &self,
        fields: &Fields,
        name: &'static str,
    ) -> Result<Option<Vec<u8>>, MbFileError> {
        let Some(uid) = fields.optional_uid(name)? else {
            return Ok(None);
        };
        let Some(index) = self.resolve(uid)? else {
            return Ok(None);
        };
        match self.plist.object(index)? {
            Object::Data(bytes) => Ok(Some(bytes.to_vec())),
            other => Err(MbFileError::WrongType {
                key: name,
                expected: "data",
                found: other.type_name(),
            }),
        }
    }
}

fn expect_string(
    plist: &Bplist<'_>,
    index: usize,
    name: &'static str,
) -> Result<String, MbFileError> {
    match plist.object(index)? {
        Object::String(s) => Ok(s.into_owned()),
        other => Err(MbFileError::WrongType {
            key: name,
            expected: "a string",
            found: other.type_name(),
        }),
    }
}

/// The known keys of the root dictionary, each with its inline value (an integer or a UID).
struct Fields<'a> {
    values: [Option<Object<'a>>; ROOT_KEYS.len()],
}

impl<'a> Fields<'a> {
    /// One pass over the root dictionary; unknown keys are ignored, known ones taken once.
    fn collect(plist: &Bplist<'a>, root: usize) -> Result<Self, MbFileError> {
        let (keys, values) = match plist.object(root)? {
            Object::Dict { keys, values } => (keys, values),
            other => {
                return Err(MbFileError::WrongType {
                    key: "root",
                    expected: "a dictionary",
                    found: other.type_name(),
                })
            }
        };
        let mut fields = Fields {
            values: Default::default(),
        };
        for i in 0..keys.len() {
            let Object::String(name) = plist.object(keys.get(i)?)? else {
                continue;
            };
            let Some(slot) = ROOT_KEYS.iter().position(|k| *k == name) else {
                continue;
            };
            if fields.values[slot].is_some() {
                return Err(MbFileError::DuplicateKey(ROOT_KEYS[slot]));
            }
            fields.values[slot] = Some(plist.object(values.get(i)?)?);
        }
        Ok(fields)
    }

    fn get(&self, name: &'static str) -> Option<&Object<'a>> {
        let slot = ROOT_KEYS.iter().position(|k| *k == name)?;
        self.values[slot].as_ref()
    }

    fn optional_uid(&self, name: &'static str) -> Result<Option<u64>, MbFileError> {
        match self.get(name) {
            None => Ok(None),
            Some(Object::Uid(uid)) => Ok(Some(*uid)),
            Some(other) => Err(MbFileError::WrongType {
                key: name,
                expected: "a UID",
                found: other.type_name(),
            }),
        }
    }

    fn uid(&self, name: &'static str) -> Result<u64, MbFileError> {
        self.optional_uid(name)?
            .ok_or(MbFileError::MissingKey(name))
    }

    fn int<T: TryFrom<i128>>(&self, name: &'static str) -> Result<T, MbFileError> {
        match self.get(name) {
            None => Err(MbFileError::MissingKey(name)),
            Some(Object::Int(v)) => T::try_from(*v).map_err(|_| MbFileError::OutOfRange {
                key: name,
                value: *v,
            }),
            Some(other) => Err(MbFileError::WrongType {
                key: name,
                expected: "an integer",
                found: other.type_name(),
            }),
        }
    }
}

/// Parses an `ExtendedAttributes` blob (a binary plist dictionary of name → data) into
/// (name, value) pairs in stored order.
pub fn decode_extended_attributes(blob: &[u8]) -> Result<Vec<(String, Vec<u8>)>, MbFileError> {
    const NAME: &str = "ExtendedAttributes";
    if blob.len() > MAX_MBFILE_LEN {
        return Err(MbFileError::TooLarge {
            len: blob.len(),
            max: MAX_MBFILE_LEN,
        });
    }
    let plist = Bplist::parse(blob)?;
    let (keys, values) = match plist.object(plist.top())? {
        Object::Dict { keys, values } => (keys, values),
        other => {
            return Err(MbFileError::WrongType {
                key: NAME,
                expected: "a dictionary",
                found: other.type_name(),
            })
        }
    };
    let mut out = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        let name = expect_string(&plist, keys.get(i)?, NAME)?;
        match plist.object(values.get(i)?)? {
            Object::Data(value) => out.push((name, value.to_vec())),
            other => {
                return Err(MbFileError::WrongType {
                    key: NAME,
                    expected: "data",
                    found: other.type_name(),
                })
            }
        }
    }
    Ok(out)
}

/// Encodes extended attributes as iOS stores them: a binary plist dictionary of name → data.
pub fn encode_extended_attributes(attributes: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = BplistWriter::new();
    let dict = w.reserve();
    let keys = attributes.iter().map(|(k, _)| w.string(k)).collect();
    let values = attributes.iter().map(|(_, v)| w.data(v)).collect();
    w.set_dict(dict, keys, values);
    w.finish(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_file() -> MbFile {
        MbFile {
            relative_path: "Library/SMS/sms.db".into(),
            size: 1099,
            mode: 0o100644,
            inode: 677_745,
            user_id: 501,
            group_id: 501,
            birth: 1_638_385_035,
            last_modified: 1_638_385_035,
            last_status_change: 1_638_385_035,
            protection_class: 4,
            encryption_key: Some([&4u32.to_le_bytes()[..], &[0xab; 40]].concat()),
            digest: Some(vec![0x9c; 20]),
            extended_attributes: Some(encode_extended_attributes(&[(
                "com.apple.TextEncoding".into(),
                b"utf-8;134217984".to_vec(),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let f = sample_file();
        let bytes = f.encode();
        assert_eq!(MbFile::decode(&bytes).unwrap(), f);
        assert_eq!(f.encryption_key_class(), Some(4));
        assert!(f.is_regular_file());
    }

    #[test]
    fn plist_crate_sees_the_apple_layout() {
        let bytes = sample_file().encode();
        let v = plist::Value::from_reader(std::io::Cursor::new(&bytes)).unwrap();
        let top = v.as_dictionary().unwrap();
        assert_eq!(
            top.get("$archiver").unwrap().as_string(),
            Some("NSKeyedArchiver")
        );
        assert_eq!(
            top.get("$version").unwrap().as_unsigned_integer(),
            Some(100_000)
        );
        let objects = top.get("$objects").unwrap().as_array().unwrap();
        assert_eq!(objects[0].as_string(), Some("$null"));
        assert_eq!(objects[2].as_string(), Some("Library/SMS/sms.db"));
        assert_eq!(objects[3].as_data().unwrap().len(), 20); // digest
        let key = objects[4].as_dictionary().unwrap();
        assert_eq!(key.get("NS.data").unwrap().as_data().unwrap().len(), 44);
        let key_class = objects[5].as_dictionary().unwrap();
        assert_eq!(
            key_class.get("$classname").unwrap().as_string(),
            Some("NSMutableData")
        );
        assert!(objects[6].as_data().unwrap().starts_with(b"bplist00"));
        let class = objects[7].as_dictionary().unwrap();
        assert_eq!(class.get("$classname").unwrap().as_string(), Some("MBFile"));
        let root = objects[1].as_dictionary().unwrap();
        assert_eq!(root.get("$class").unwrap().as_uid().unwrap().get(), 7);
        assert_eq!(
            root.get("EncryptionKey").unwrap().as_uid().unwrap().get(),
            4
        );
        assert_eq!(root.get("Size").unwrap().as_unsigned_integer(), Some(1099));
    }

    #[test]
    fn directory_and_symlink_kinds() {
        let dir = MbFile {
            mode: 0o040755,
            ..Default::default()
        };
        assert_eq!(dir.kind(), FileKind::Directory);
        let link = MbFile {
            relative_path: "a/b".into(),
            mode: 0o120755,
            target: Some("/var/mobile/x".into()),
            ..Default::default()
        };
        assert_eq!(link.kind(), FileKind::Symlink);
        assert_eq!(MbFile::decode(&link.encode()).unwrap(), link);
        assert_eq!(MbFile::default().kind(), FileKind::Other);
    }

    #[test]
    fn unicode_path_round_trips() {
        let f = MbFile {
            relative_path: "Media/Café/日本語 🎉.jpg".into(),
            mode: 0o100600,
            ..Default::default()
        };
        assert_eq!(MbFile::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn extended_attributes_round_trip() {
        let attrs = vec![
            ("com.apple.rootless".to_string(), b"coreknowledge".to_vec()),
            ("x".to_string(), vec![]),
        ];
        let blob = encode_extended_attributes(&attrs);
        assert_eq!(decode_extended_attributes(&blob).unwrap(), attrs);
    }

    #[test]
    fn oversized_blob_is_refused() {
        let big = vec![0u8; MAX_MBFILE_LEN + 1];
        assert!(matches!(
            MbFile::decode(&big),
            Err(MbFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let bytes = sample_file().encode();
        for cut in 0..bytes.len() {
            assert!(MbFile::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Flip every byte in turn: decoding may succeed or fail, but must not panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = MbFile::decode(&b);
        }
        assert!(matches!(
            MbFile::decode(b"not a plist at all, long enough to have a trailer..."),
            Err(MbFileError::Plist(_))
        ));
    }

    /// Builds an archive by hand: `objects` are written as given; `$top.root` is `root_uid`.
    fn archive_with(build: impl FnOnce(&mut BplistWriter) -> Vec<usize>, root_uid: u64) -> Vec<u8> {
        let mut w = BplistWriter::new();
        let top = w.reserve();
        let keys = ["$version", "$archiver", "$top", "$objects"].map(|k| w.string(k));
        let version = w.int(0, 100_000);
        let archiver = w.string("NSKeyedArchiver");
        let top_dict = w.reserve();
        let rk = w.string("root");
        let ru = w.uid(root_uid);
        w.set_dict(top_dict, vec![rk], vec![ru]);
        let objects = w.reserve();
        let items = build(&mut w);
        w.set_array(objects, items);
        w.set_dict(
            top,
            keys.to_vec(),
            vec![version, archiver, top_dict, objects],
        );
        w.finish(top)
    }

    #[test]
    fn uid_loop_is_refused() {
        // $objects[1] is UID 1 itself.
        let blob = archive_with(
            |w| {
                let null = w.string("$null");
                let me = w.uid(1);
                vec![null, me]
            },
            1,
        );
        assert_eq!(MbFile::decode(&blob), Err(MbFileError::UidChain { uid: 1 }));
    }

    #[test]
    fn uid_out_of_range_is_refused() {
        let blob = archive_with(|w| vec![w.string("$null")], 9);
        assert_eq!(
            MbFile::decode(&blob),
            Err(MbFileError::UidOutOfRange { uid: 9, count: 1 })
        );
    }

    /// Re-encodes the sample with one root value replaced.
    fn with_root_value(name: &str, value: impl FnOnce(&mut BplistWriter) -> usize) -> Vec<u8> {
        let f = sample_file();
        let mut value = Some(value);
        archive_with(
            |w| {
                let null = w.string("$null");
                let root = w.reserve();
                let mut keys = Vec::new();
                let mut values = Vec::new();
                for (k, v) in [
                    ("$class", None),
                    ("RelativePath", None),
                    ("Size", Some(f.size as i128)),
                    ("Mode", Some(f.mode as i128)),
                    ("InodeNumber", Some(1)),
                    ("UserID", Some(501)),
                    ("GroupID", Some(501)),
                    ("Birth", Some(1)),
                    ("LastModified", Some(1)),
                    ("LastStatusChange", Some(1)),
                    ("ProtectionClass", Some(4)),
                    ("Flags", Some(0)),
                ] {
                    keys.push(w.string(k));
                    values.push(if k == name {
                        (value.take().unwrap())(w)
                    } else {
                        match (k, v) {
                            ("$class", _) => w.uid(3),
                            ("RelativePath", _) => w.uid(2),
                            (_, Some(v)) => w.int(0, v),
                            _ => unreachable!(),
                        }
                    });
                }
                w.set_dict(root, keys, values);
                let path = w.string("a");
                let class = class_dict(w, "MBFile", &["NSObject"], false);
                vec![null, root, path, class]
            },
            1,
        )
    }

    #[test]
    fn hand_built_archive_decodes() {
        let f = MbFile::decode(&with_root_value("Flags", |w| w.int(0, 128))).unwrap();
        assert_eq!(f.flags, 128);
        assert_eq!(f.relative_path, "a");
    }

    #[test]
    fn negative_size_is_out_of_range() {
        let blob = with_root_value("Size", |w| w.int(0, -1));
        assert_eq!(
            MbFile::decode(&blob),
            Err(MbFileError::OutOfRange {
                key: "Size",
                value: -1
            })
        );
    }

    #[test]
    fn wrong_types_are_typed_errors() {
        let blob = with_root_value("Mode", |w| w.string("rwx"));
        assert!(matches!(
            MbFile::decode(&blob),
            Err(MbFileError::WrongType { key: "Mode", .. })
        ));
        let blob = with_root_value("RelativePath", |w| w.int(0, 5));
        assert!(matches!(
            MbFile::decode(&blob),
            Err(MbFileError::WrongType {
                key: "RelativePath",
                ..
            })
        ));
        // RelativePath pointing at the class dictionary instead of a string.
        let blob = with_root_value("RelativePath", |w| w.uid(3));
        assert!(matches!(
            MbFile::decode(&blob),
            Err(MbFileError::WrongType {
                key: "RelativePath",
                ..
            })
        ));
        // The class pointing at the path string.
        let blob = with_root_value("$class", |w| w.uid(2));
        assert!(matches!(
            MbFile::decode(&blob),
            Err(MbFileError::WrongType { key: "$class", .. })
        ));
    }

    #[test]
    fn wrong_class_is_refused() {
        let blob = archive_with(
            |w| {
                let null = w.string("$null");
                let root = w.reserve();
                let k = w.string("$class");
                let v = w.uid(2);
                w.set_dict(root, vec![k], vec![v]);
                let class = class_dict(w, "NSDictionary", &["NSObject"], false);
                vec![null, root, class]
            },
            1,
        );
        assert_eq!(
            MbFile::decode(&blob),
            Err(MbFileError::WrongClass("NSDictionary".into()))
        );
    }
}
