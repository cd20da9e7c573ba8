/// <reference types="vite/client" />
interface ImportMetaEnv {
  /** The API origin (Envoy) when it differs from the page's. */
  readonly VITE_COWATCH_API?: string;
}
