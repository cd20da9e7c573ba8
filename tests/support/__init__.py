"""Test infrastructure shared by the suites: throwaway servers and database helpers."""
