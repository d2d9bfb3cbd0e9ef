"""Message catalogs (Bahasa Indonesia by default, English) and local date and number formats.

Kept as plain dictionaries rather than gettext files: the portal has a few hundred short
strings, and a test checks that both catalogs hold exactly the same keys.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"
# Indonesia's western time zone, where the demo network's clinics are; a fixed offset so no
# time zone database is needed at run time.
WIB = timezone(timedelta(hours=7), "WIB")

_MONTHS = {
    "id": ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des"),
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
}

CATALOG: dict[str, dict[str, str]] = {
    "id": {
        "app": "Rekam: rekam medis bersama",
        "skip": "Lompat ke isi",
        "lang_switch": "English",
        "login_title": "Masuk",
        "username": "Nama pengguna atau ID",
        "password": "Kata sandi",
        "login_button": "Masuk",
        "login_failed": "Nama pengguna atau kata sandi salah.",
        "login_locked": "Terlalu banyak percobaan gagal. Coba lagi nanti.",
        "login_help": "Pasien dan staf masuk dengan kata sandi yang diberikan klinik mereka.",
        "logout": "Keluar",
        "logged_out": "Anda sudah keluar.",
        "expired": "Sesi Anda berakhir karena tidak aktif. Silakan masuk lagi.",
        "signed_in_as": "Masuk sebagai",
        "nav_timeline": "Riwayat medis",
        "nav_access": "Siapa yang mengakses",
        "nav_consents": "Izin akses",
        "nav_patients": "Pasien",
        "nav_prescriptions": "Resep",
        "timeline_title": "Riwayat medis saya",
        "timeline_empty": "Belum ada catatan.",
        "type": "Jenis",
        "date": "Tanggal",
        "organisation": "Organisasi",
        "author": "Penulis",
        "version": "Versi",
        "open": "Buka",
        "dispensed": "sudah diserahkan",
        "not_dispensed": "belum diserahkan",
        "erased": "dihapus",
        "record_title": "Catatan",
        "summary": "Ringkasan",
        "full_content": "Isi lengkap (FHIR R4)",
        "verified": "Terverifikasi di rantai",
        "not_verified": "Verifikasi gagal",
        "verified_detail": "Transaksi {tx} di blok {height}, dibuktikan sampai titik periksa {cp}.",
        "receipt": "Unduh tanda terima (JSON)",
        "access_title": "Siapa yang mengakses data saya",
        "access_empty": "Belum ada kejadian.",
        "when": "Waktu",
        "who": "Siapa",
        "event": "Kejadian",
        "purpose": "Tujuan",
        "record": "Catatan",
        "emergency_badge": "DARURAT",
        "ev_access.read": "membaca",
        "ev_denied": "DITOLAK membaca",
        "ev_record.write": "menulis",
        "ev_record.erase": "menghapus",
        "ev_consent.grant": "memberi izin",
        "ev_consent.revoke": "mencabut izin",
        "ev_emergency.open": "AKSES DARURAT",
        "ev_prescription.dispense": "menyerahkan obat",
        "ev_patient.register": "mendaftarkan",
        "consents_title": "Izin akses",
        "consents_empty": "Tidak ada izin aktif.",
        "grantee": "Penerima",
        "scope": "Cakupan",
        "until": "Berlaku sampai",
        "revoke": "Cabut",
        "revoked": "Izin dicabut.",
        "granted": "Izin diberikan.",
        "grant_title": "Beri izin baru",
        "grant_button": "Beri izin",
        "days": "Lama (hari)",
        "all_types": "Semua jenis catatan",
        "patients_title": "Pasien",
        "patients_empty": "Tidak ada pasien yang bisa Anda lihat.",
        "patient": "Pasien",
        "via": "Dasar akses",
        "via_home": "pasien klinik ini",
        "via_consent": "izin pasien",
        "via_emergency": "akses darurat",
        "patient_title": "Pasien {id}",
        "add_title": "Tambah catatan",
        "add_kind": "Jenis catatan",
        "kind_note": "Catatan kunjungan",
        "kind_weight": "Berat badan (kg)",
        "kind_glucose": "Glukosa darah (mg/dL)",
        "kind_temperature": "Suhu tubuh (°C)",
        "value": "Nilai",
        "note": "Catatan",
        "add_button": "Simpan catatan",
        "added": "Catatan disimpan di rantai.",
        "emergency_title": "Akses darurat",
        "emergency_warning": (
            "Gunakan hanya dalam keadaan darurat. Akses ini dicatat di rantai, dibatasi "
            "waktu, dan pasien akan melihatnya beserta nama Anda."
        ),
        "emergency_reason": "Alasan (wajib)",
        "emergency_confirm": "Saya mengerti bahwa akses ini diaudit",
        "emergency_button": "Buka akses darurat",
        "emergency_opened": "Akses darurat dibuka selama 60 menit.",
        "reason_unconscious": "Pasien tidak sadar",
        "reason_life_threatening": "Mengancam jiwa",
        "reason_unable_to_consent": "Pasien tidak dapat memberi izin",
        "reason_urgent_transfer": "Rujukan mendesak",
        "choose": "Pilih…",
        "patient_id": "ID pasien",
        "prescriptions_title": "Resep yang dibagikan ke apotek ini",
        "prescriptions_empty": "Tidak ada resep yang dibagikan.",
        "dispense_button": "Serahkan obat",
        "dispensed_ok": "Penyerahan obat dicatat di rantai.",
        "status": "Status",
        "forbidden": "Anda tidak berhak membuka halaman ini.",
        "not_found": "Halaman atau catatan tidak ditemukan.",
        "bad_request": "Permintaan tidak valid.",
        "csrf": "Formulir kedaluwarsa. Muat ulang halaman dan coba lagi.",
        "error": "Terjadi kesalahan.",
        "back": "Kembali",
        "home": "Beranda",
        "value_required": "Isi nilai atau catatan.",
        "f_name": "Nama",
        "f_gender": "Jenis kelamin",
        "f_birthDate": "Tanggal lahir",
        "f_code": "Kode",
        "f_medicationCodeableConcept": "Obat",
        "f_type": "Jenis",
        "f_class": "Kelas",
        "f_value": "Nilai",
        "f_effectiveDateTime": "Waktu pemeriksaan",
        "f_recordedDate": "Dicatat",
        "f_authoredOn": "Diresepkan",
        "f_date": "Tanggal",
        "f_whenHandedOver": "Diserahkan",
        "f_period": "Waktu kunjungan",
        "f_dosage": "Aturan pakai",
        "f_note": "Catatan",
    },
    "en": {
        "app": "Rekam: shared medical records",
        "skip": "Skip to content",
        "lang_switch": "Bahasa Indonesia",
        "login_title": "Log in",
        "username": "User name or ID",
        "password": "Password",
        "login_button": "Log in",
        "login_failed": "Wrong user name or password.",
        "login_locked": "Too many failed attempts. Try again later.",
        "login_help": "Patients and staff log in with the password their clinic gave them.",
        "logout": "Log out",
        "logged_out": "You have logged out.",
        "expired": "Your session ended after inactivity. Please log in again.",
        "signed_in_as": "Logged in as",
        "nav_timeline": "Medical history",
        "nav_access": "Who accessed",
        "nav_consents": "Access permissions",
        "nav_patients": "Patients",
        "nav_prescriptions": "Prescriptions",
        "timeline_title": "My medical history",
        "timeline_empty": "No records yet.",
        "type": "Type",
        "date": "Date",
        "organisation": "Organisation",
        "author": "Author",
        "version": "Version",
        "open": "Open",
        "dispensed": "dispensed",
        "not_dispensed": "not dispensed",
        "erased": "erased",
        "record_title": "Record",
        "summary": "Summary",
        "full_content": "Full content (FHIR R4)",
        "verified": "Verified against the chain",
        "not_verified": "Verification failed",
        "verified_detail": "Transaction {tx} in block {height}, proven up to checkpoint {cp}.",
        "receipt": "Download receipt (JSON)",
        "access_title": "Who accessed my data",
        "access_empty": "No events yet.",
        "when": "When",
        "who": "Who",
        "event": "Event",
        "purpose": "Purpose",
        "record": "Record",
        "emergency_badge": "EMERGENCY",
        "ev_access.read": "read",
        "ev_denied": "DENIED read",
        "ev_record.write": "wrote",
        "ev_record.erase": "erased",
        "ev_consent.grant": "granted access",
        "ev_consent.revoke": "revoked access",
        "ev_emergency.open": "EMERGENCY ACCESS",
        "ev_prescription.dispense": "dispensed",
        "ev_patient.register": "registered",
        "consents_title": "Access permissions",
        "consents_empty": "No active permissions.",
        "grantee": "Grantee",
        "scope": "Scope",
        "until": "Valid until",
        "revoke": "Revoke",
        "revoked": "Permission revoked.",
        "granted": "Permission granted.",
        "grant_title": "Grant a new permission",
        "grant_button": "Grant",
        "days": "Duration (days)",
        "all_types": "All record types",
        "patients_title": "Patients",
        "patients_empty": "No patients you may see.",
        "patient": "Patient",
        "via": "Basis",
        "via_home": "patient of this clinic",
        "via_consent": "patient's consent",
        "via_emergency": "emergency access",
        "patient_title": "Patient {id}",
        "add_title": "Add a record",
        "add_kind": "Kind of record",
        "kind_note": "Encounter note",
        "kind_weight": "Body weight (kg)",
        "kind_glucose": "Blood glucose (mg/dL)",
        "kind_temperature": "Body temperature (°C)",
        "value": "Value",
        "note": "Note",
        "add_button": "Save record",
        "added": "Record saved on the chain.",
        "emergency_title": "Emergency access",
        "emergency_warning": (
            "Use only in an emergency. This access is recorded on the chain, limited in time, "
            "and the patient will see it with your name."
        ),
        "emergency_reason": "Reason (required)",
        "emergency_confirm": "I understand that this access is audited",
        "emergency_button": "Open emergency access",
        "emergency_opened": "Emergency access opened for 60 minutes.",
        "reason_unconscious": "Patient unconscious",
        "reason_life_threatening": "Life-threatening",
        "reason_unable_to_consent": "Patient unable to consent",
        "reason_urgent_transfer": "Urgent transfer",
        "choose": "Choose…",
        "patient_id": "Patient ID",
        "prescriptions_title": "Prescriptions shared with this pharmacy",
        "prescriptions_empty": "No prescriptions shared.",
        "dispense_button": "Dispense",
        "dispensed_ok": "The dispense is recorded on the chain.",
        "status": "Status",
        "forbidden": "You may not open this page.",
        "not_found": "Page or record not found.",
        "bad_request": "Invalid request.",
        "csrf": "The form expired. Reload the page and try again.",
        "error": "Something went wrong.",
        "back": "Back",
        "home": "Home",
        "value_required": "Enter a value or a note.",
        "f_name": "Name",
        "f_gender": "Gender",
        "f_birthDate": "Date of birth",
        "f_code": "Code",
        "f_medicationCodeableConcept": "Medication",
        "f_type": "Type",
        "f_class": "Class",
        "f_value": "Value",
        "f_effectiveDateTime": "Observed",
        "f_recordedDate": "Recorded",
        "f_authoredOn": "Prescribed",
        "f_date": "Date",
        "f_whenHandedOver": "Handed over",
        "f_period": "Visit",
        "f_dosage": "Dosage",
        "f_note": "Note",
    },
}


def pick_language(value: str | None) -> str:
    """A supported language code; the default for anything else."""
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


def translate(lang: str, key: str, **values: object) -> str:
    """The message for ``key`` in ``lang`` with ``{name}`` placeholders filled."""
    text = CATALOG[pick_language(lang)].get(key) or CATALOG["en"].get(key, key)
    return text.format(**values) if values else text


def field_label(lang: str, name: str) -> str:
    """A FHIR element's display label, or the name itself (e.g. a LOINC component's text)."""
    return CATALOG[pick_language(lang)].get(f"f_{name}", name)


def format_time(lang: str, ms: int) -> str:
    """A ledger time (ms since the epoch) in Jakarta time: '23 Nov 2026 22.52' in Indonesian."""
    when = datetime.fromtimestamp(ms / 1000, UTC).astimezone(WIB)
    month = _MONTHS[pick_language(lang)][when.month - 1]
    if pick_language(lang) == "id":
        return f"{when.day} {month} {when.year} {when.hour:02d}.{when.minute:02d} WIB"
    return f"{when.day} {month} {when.year}, {when.hour:02d}:{when.minute:02d} WIB"


def format_number(lang: str, value: float | int) -> str:
    """A number with local separators: 1.234,5 in Indonesian, 1,234.5 in English."""
    if isinstance(value, bool):
        return str(value)
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.2f}".rstrip("0").rstrip(".")
    if pick_language(lang) == "id":
        return text.replace(",", "\0").replace(".", ",").replace("\0", ".")
    return text
