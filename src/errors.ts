/**
 * Every error holdfast raises on purpose is a HoldfastError with a stable `code`
 * (`HOLDFAST_ERR_…`) that scripts and tests can match on, and a message that
 * tells the user what to do next.
 */
export class HoldfastError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A configuration file (or value) that cannot be used. Names the file, line and field. */
export class ConfigError extends HoldfastError {
  readonly file: string | undefined;
  readonly line: number | undefined;
  readonly field: string | undefined;
  constructor(
    message: string,
    where: { file?: string | undefined; line?: number | undefined; field?: string | undefined } = {},
    options?: ErrorOptions,
  ) {
    const prefix =
      where.file !== undefined ? `${where.file}${where.line !== undefined ? `:${where.line}` : ''}: ` : '';
    const field = where.field !== undefined && where.field !== '' ? `${where.field}: ` : '';
    super('HOLDFAST_ERR_CONFIG', `${prefix}${field}${message}`, options);
    this.file = where.file;
    this.line = where.line;
    this.field = where.field;
  }
}

/** A listener could not bind its address. */
export class ListenError extends HoldfastError {
  constructor(address: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(
      'HOLDFAST_ERR_LISTEN',
      `cannot listen on ${address}: ${reason}. Is another process using the port, or is the address not local?`,
      { cause },
    );
  }
}
