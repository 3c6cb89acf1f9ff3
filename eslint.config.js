// ESLint with typescript-eslint's type-aware rules over every TypeScript file of the repo.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'lib/wire/gen/', '.build-*/', '**/*.js', '**/*.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Packet types come off the wire as numbers (a newer peer's unknown type is any
      // number), so they are compared with the PacketType enum on purpose.
      '@typescript-eslint/no-unsafe-enum-comparison': 'off',
      // A handler typed to return a promise may have nothing to await.
      '@typescript-eslint/require-await': 'off',
    },
  },
);
