//! A `SecretStore` held in memory: the demo's fixed password and the tests' passwords. Never
//! used by the daemon on a box, where passwords are sealed (`secrets::SystemdCredsStore`).

use crate::password::Password;
use crate::secrets::{SealedEntry, SealingMode, SecretStore, SecretsError, Slot};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Passwords in process memory (zeroized on drop by `Password`).
#[derive(Default)]
pub struct MemorySecretStore {
    slots: Mutex<BTreeMap<Slot, Password>>,
}

impl MemorySecretStore {
    /// A store holding `default` as the box default password.
    pub fn with_default(default: Password) -> Self {
        let s = Self::default();
        s.lock().insert(Slot::Default, default);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Slot, Password>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SecretStore for MemorySecretStore {
    fn get(&self, slot: &Slot) -> Result<Password, SecretsError> {
        self.lock()
            .get(slot)
            .cloned()
            .ok_or_else(|| SecretsError::NotFound { slot: slot.clone() })
    }
    fn set(&self, slot: &Slot, password: &Password) -> Result<(), SecretsError> {
        self.lock().insert(slot.clone(), password.clone());
        Ok(())
    }
    fn remove(&self, slot: &Slot) -> Result<bool, SecretsError> {
        Ok(self.lock().remove(slot).is_some())
    }
    fn list(&self) -> Result<Vec<SealedEntry>, SecretsError> {
        Ok(self
            .lock()
            .keys()
            .map(|slot| SealedEntry {
                slot: slot.clone(),
                mode: SealingMode::Unknown,
                path: "memory".into(),
            })
            .collect())
    }
    fn mode(&self) -> SealingMode {
        SealingMode::Unknown
    }
}
