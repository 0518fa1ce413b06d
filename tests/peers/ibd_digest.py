"""Decrypt a backup folder with iphone-backup-decrypt and print what it found, as JSON lines.

usage: ibd_digest.py BACKUP_DIR PASSWORD_FILE
One line per Manifest.db row: {"kind": "file"|"dir"|"link", "domain", "path", "file_id",
"sha256"/"size" for files, "target" for links}. Everything cryptographic (keybag, KDF, key unwrap,
Manifest.db and file AES-CBC, padding) is done by iphone-backup-decrypt; this script only walks the
rows of the Manifest.db it decrypted and hashes the bytes it returns.
"""
import hashlib
import json
import sys

from iphone_backup_decrypt import EncryptedBackup, utils

KINDS = {1: "file", 2: "dir", 4: "link"}


def main():
    backup_dir, pw_file = sys.argv[1], sys.argv[2]
    with open(pw_file, "rb") as f:
        password = f.read().split(b"\n")[0].rstrip(b"\r")
    backup = EncryptedBackup(backup_directory=backup_dir, passphrase=password)
    backup.test_decryption()
    with backup.manifest_db_cursor() as cur:
        cur.execute("SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY domain, relativePath")
        rows = cur.fetchall()
    for file_id, domain, rel, flags, blob in rows:
        rec = {"kind": KINDS.get(flags, str(flags)), "domain": domain, "path": rel, "file_id": file_id}
        plist = utils.FilePlist(blob)
        if flags == 1:
            data = backup._decrypt_inner_file(file_id=file_id, file_bplist=blob)
            rec["sha256"] = hashlib.sha256(data).hexdigest()
            rec["size"] = len(data)
        elif flags == 4:
            rec["target"] = plist.target
        sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
