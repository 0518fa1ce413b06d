//! DeviceLink and mobilebackup2, the host side of a backup. (being written)
